"""The FastAPI surface."""
