"""The edge box: the same functions as on Lambda, behind OpenFaaS or ``zaindari edge serve``.

* :mod:`zaindari.edge.http`: the OpenFaaS ``python3-http`` contract (event, response), the bearer
  token read from the secret files, request size limits;
* :mod:`zaindari.edge.wiring`: the edge's composition roots (settings, use cases on local ports);
* :mod:`zaindari.edge.local_lake`: a folder laid out as the lake, the edge's default ports;
* :mod:`zaindari.edge.server`: the WSGI app that runs the functions' ``handler.py`` without OpenFaaS.
"""
