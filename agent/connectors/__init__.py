"""Cloud connectors: one module per cloud API behind two small interfaces."""
