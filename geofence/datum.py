"""GCJ-02 and BD-09 to WGS-84.

GCJ-02 is not a geodetic datum pyproj knows: it is a published obfuscation formula applied by
Chinese map SDKs, and BD-09 is GCJ-02 shifted again by Baidu. No maintained library implements
it (the PyPI ones are unmaintained since 2018), so the widely published formulas live here.
The inverse of GCJ-02 has no closed form; a fixed-point iteration reaches < 0.01 m.
"""

from __future__ import annotations

import math

_A = 6378245.0  # Krasovsky 1940 semi-major axis, as the formula uses
_EE = 0.00669342162296594323
_X_PI = math.pi * 3000.0 / 180.0


def in_china(lat: float, lon: float) -> bool:
    """The rough box in which the GCJ-02 shift is applied; outside it the datums coincide."""
    return 72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271


def _delta(lat: float, lon: float) -> tuple[float, float]:
    x, y = lon - 105.0, lat - 35.0
    dlat = (-100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
            + (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2 / 3
            + (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2 / 3
            + (160.0 * math.sin(y / 12.0 * math.pi) + 320 * math.sin(y * math.pi / 30.0)) * 2 / 3)
    dlon = (300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
            + (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2 / 3
            + (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2 / 3
            + (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2 / 3)
    rad = lat / 180.0 * math.pi
    magic = 1 - _EE * math.sin(rad) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1 - _EE)) / (magic * sqrt_magic) * math.pi)
    dlon = (dlon * 180.0) / (_A / sqrt_magic * math.cos(rad) * math.pi)
    return dlat, dlon


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    if not in_china(lat, lon):
        return lat, lon
    dlat, dlon = _delta(lat, lon)
    return lat + dlat, lon + dlon


def gcj02_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    if not in_china(lat, lon):
        return lat, lon
    wlat, wlon = lat, lon
    for _ in range(30):
        glat, glon = wgs84_to_gcj02(wlat, wlon)
        elat, elon = glat - lat, glon - lon
        wlat, wlon = wlat - elat, wlon - elon
        if abs(elat) < 1e-9 and abs(elon) < 1e-9:
            break
    return wlat, wlon


def bd09_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    x, y = lon - 0.0065, lat - 0.006
    z = math.sqrt(x * x + y * y) - 0.00002 * math.sin(y * _X_PI)
    theta = math.atan2(y, x) - 0.000003 * math.cos(x * _X_PI)
    return z * math.sin(theta), z * math.cos(theta)


def gcj02_to_bd09(lat: float, lon: float) -> tuple[float, float]:
    z = math.sqrt(lon * lon + lat * lat) + 0.00002 * math.sin(lat * _X_PI)
    theta = math.atan2(lat, lon) + 0.000003 * math.cos(lon * _X_PI)
    return z * math.sin(theta) + 0.006, z * math.cos(theta) + 0.0065


def to_wgs84(lat: float, lon: float, datum: str) -> tuple[float, float]:
    if datum == "gcj02":
        return gcj02_to_wgs84(lat, lon)
    if datum == "bd09":
        return gcj02_to_wgs84(*bd09_to_gcj02(lat, lon))
    return lat, lon
