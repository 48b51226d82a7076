"""Delivery: from the ledger's queues to each cloud, and what became of every item.

One send loop per destination (dispatch.py) claims queued items, prepares them (amendments for
append-only clouds in amend.py), keeps to the cloud's rate budget, sends them through its
connector, decides each outcome with one pure function (outcome.py) and records it in the
ledger. bulk.py sends runs of contact changes through a cloud's bulk endpoint.
"""
