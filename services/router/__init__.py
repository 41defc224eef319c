"""The router: the gateway's OpenAI-compatible ingress."""
