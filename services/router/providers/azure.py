"""Azure OpenAI: OpenAI's wire format at deployment URLs.

`{base_url}/openai/deployments/{model}/chat/completions?api-version=...` with the key
in the `api-key` header; `model` in the configuration is the Azure deployment name.
Bodies, streams and errors are OpenAI's, so everything else is the OpenAI adapter.
"""

from __future__ import annotations

from urllib.parse import quote

from services.kernel.config import AzureDeployment, Deployment
from services.router.providers.openai import OpenAIAdapter


class AzureAdapter(OpenAIAdapter):
    def _url(self, dep: Deployment, path: str) -> str:
        config = dep.config
        assert isinstance(config, AzureDeployment)
        name = quote(config.model, safe="")
        return f"{config.base_url}/openai/deployments/{name}/{path}?api-version={config.api_version}"

    def _headers(self, dep: Deployment) -> dict[str, str]:
        return {"content-type": "application/json", "api-key": dep.secrets["api_key"]}
