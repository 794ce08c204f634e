"""The operator dashboard: static pages over the JSON API, and Plotly's JavaScript
from the plotly wheel, so nothing is fetched from elsewhere at run time."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

STATIC = Path(__file__).parents[1] / "static"
_ASSETS = {
    "dashboard.css": (STATIC / "dashboard.css", "text/css"),
    "dashboard.js": (STATIC / "dashboard.js", "text/javascript"),
}
# The pages hold no data: all of it comes from the API and is set as text.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


def plotly_js() -> Path:
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((STATIC / name).read_text(encoding="utf-8"), headers=_SECURITY_HEADERS)


router = APIRouter(tags=["dashboard"], include_in_schema=False)


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/dashboard")


@router.get("/dashboard")
async def dashboard() -> HTMLResponse:
    return _page("dashboard.html")


@router.get("/dashboard/product")
async def product() -> HTMLResponse:
    return _page("product.html")


@router.get("/dashboard/static/{name}")
async def asset(name: str) -> FileResponse:
    if name == "plotly.min.js":
        return FileResponse(plotly_js(), media_type="text/javascript")
    if name not in _ASSETS:
        raise HTTPException(404, f"No asset {name!r}")
    path, media_type = _ASSETS[name]
    return FileResponse(path, media_type=media_type)
