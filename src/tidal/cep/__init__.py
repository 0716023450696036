"""tidal.cep: operators as a service for complex event processing (CEPless), with hot updates.

Entry points: `manager.NodeManager` (registry, deployments, hot update), `api.make_app` (HTTP
API), `stream.Stream` / `stream.SaseEngine` (the two host engines), `nfa.Pattern` (Flink-style
patterns), `sase.parse` (the SASE-style language), `client.OperatorClient` (the host side of
a serverless call), `sdk.python.Operator` (write an operator), `bench.run` (figures).
See docs/cep.md.
"""
