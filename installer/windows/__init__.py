"""The Windows packaging: the WiX source of the MSI and its builder."""
