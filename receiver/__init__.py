"""The receiver: the ASGI callback endpoint and the admin API."""

from receiver.app import create_app

__all__ = ["create_app"]
