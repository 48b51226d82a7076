"""Delivery: from the ledger's queues to each cloud, and what became of every item.

One send loop per destination (dispatch.py) wires the stages of a send, each a module of its
own: claim (dispatch.py, with the set-aside items of setaside.py), prepare (prepare.py: read
back, amendments as differences by amend.py, the buyer resolved), budget (budget.py), send
(send.py: the connector and its probe), decide (outcome.py's pure table, over the history of
history.py) and record (record.py, the destination's state in state.py). attempt.py takes one
item through them; flight.py runs several sends at once in window.py's window, ordered by key;
bulk.py sends runs of contact changes through a cloud's bulk endpoint (its requests in
bulkcalls.py).
"""
