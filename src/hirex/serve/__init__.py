"""The HTTP retrieval service: a trained model and its index behind FastAPI, with durable live
item updates (``hirex serve``)."""

from hirex.serve.app import create_app
from hirex.serve.service import Query, RetrievalService, Retrieved, ServiceError

__all__ = ["Query", "Retrieved", "RetrievalService", "ServiceError", "create_app"]
