"""The dashboard page: `mailroom dashboard` serves one live page over Prometheus, Redis, the model
registry and the operational topics (`app`); `panels` turns their data into charts and tables."""
