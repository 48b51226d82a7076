"""Operations: what the shop and a technician see and run on a till.

The status in one answer (status.py), the doctor's checks (doctor.py), the support bundle
(support.py), alerts (alerts.py), the outage forecast (forecast.py), and the reconciliation of
the takings per store-day (reconcile.py) with the go-live QA report (qareport.py), both rendered
for a person by render.py.
"""
