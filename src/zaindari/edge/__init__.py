"""The edge box: the same functions as on Lambda, behind OpenFaaS or ``zaindari edge serve``,
scoring, alerting and storing-and-forwarding on a machine next to the presses, online or not.

* :mod:`zaindari.edge.http`: the OpenFaaS ``python3-http`` contract (event, response), the bearer
  token read from the secret files, request size limits;
* :mod:`zaindari.edge.wiring`: the edge's composition roots (one box per process, the use cases on it);
* :mod:`zaindari.edge.server`: the WSGI app that runs the functions' ``handler.py`` without OpenFaaS;
* :mod:`zaindari.edge.buffer`: the durable SQLite store-and-forward buffer and its shipper;
* :mod:`zaindari.edge.local_alerts`: alerts to the plant's MQTT broker and a webhook, at once;
* :mod:`zaindari.edge.model_sync`: model updates: verify, smoke-test, swap, roll back;
* :mod:`zaindari.edge.box`: the offline box that wires them.
"""
