"""Operator SDKs: Python (`tidal.cep.sdk.python`) and Node.js (`sdk/node/`)."""
