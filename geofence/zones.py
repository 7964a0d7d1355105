"""Zones: validation, compilation to local metric frames, and a spatial index.

Metric work happens in azimuthal-equidistant frames (pyproj) centred near each zone. Frames are
shared by zones whose centres fall in the same 0.25-degree cell: a zone is then at most ~20 km
from its frame's centre, where the frame's scale error stays below 1e-5 (0.5 m at 50 km).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import pyproj
import shapely
from shapely.geometry import shape as geojson_shape

from geofence.schedule import Window, in_force
from geofence.types import Subject

GRID_DEG = 0.25
EDGE_STEP_DEG = 0.001  # ~100 m: the chord error left is below a millimetre
CIRCLE_SEGMENTS = 64  # only for the bounding box; circle depth is computed exactly


class ZoneError(ValueError):
    """An invalid zone; the message explains what and where."""


@dataclass(frozen=True, slots=True)
class Zone:
    id: int
    name: str
    kind: str  # exclusion | inclusion
    geometry: dict  # GeoJSON Polygon / MultiPolygon / Point, WGS-84
    jurisdiction_id: int
    created_at: datetime
    radius_m: float | None = None
    buffer_m: float | None = None
    subject_id: int | None = None
    schedule: tuple[Window, ...] | None = None
    deleted_at: datetime | None = None
    leave_id: int | None = None  # the destination of an approved leave

    @property
    def is_curfew(self) -> bool:
        return self.kind == "inclusion" and self.schedule is not None

    def exists_at(self, t: datetime) -> bool:
        """Zones apply from their creation: an older fix is not judged against them."""
        return self.created_at <= t and (self.deleted_at is None or t < self.deleted_at)

    def applies_to(self, subject: Subject) -> bool:
        if self.subject_id is not None:
            return self.subject_id == subject.id
        return self.jurisdiction_id in subject.jurisdiction_path


def suspended(zone: Zone, subject: Subject, t: datetime) -> bool:
    """No order in force (for a subject with orders), an inclusion zone during a leave, or a
    leave's destination while the subject may still be on the way there."""
    if zone.leave_id is not None:
        return not subject.monitored(t) or subject.travelling(zone.leave_id, t)
    return not subject.monitored(t) or (zone.kind == "inclusion" and subject.on_leave(t))


def applies(zone: Zone, subject: Subject, t: datetime) -> bool:
    """Whether `zone` binds `subject` at `t`: it is the subject's (own or of a jurisdiction
    above), it existed then (created, not yet deleted), and its schedule, read in the subject's
    time zone, is in force. The one answer evaluation and timers share, so that a late fix is
    judged on the rules in force at its time. Monitoring orders: nothing binds a subject who has
    orders outside them. Leave: the subject's own inclusion zones and curfews are suspended
    while a leave is in force (its destination, an inclusion zone of its own, binds instead);
    exclusion zones still apply."""
    return (not suspended(zone, subject, t) and zone.applies_to(subject) and zone.exists_at(t)
            and in_force(zone.schedule, ZoneInfo(subject.timezone), t))


@dataclass(frozen=True, slots=True)
class Frame:
    fwd: pyproj.Transformer
    inv: pyproj.Transformer
    key: tuple[float, float]

    def to_m(self, lon: float, lat: float) -> tuple[float, float]:
        return self.fwd.transform(lon, lat)


@lru_cache(maxsize=4096)
def frame_for(lat: float, lon: float) -> Frame:
    key = (round(lat / GRID_DEG) * GRID_DEG, round(lon / GRID_DEG) * GRID_DEG)
    return _frame(key)


@lru_cache(maxsize=4096)
def _frame(key: tuple[float, float]) -> Frame:
    crs = pyproj.CRS.from_proj4(f"+proj=aeqd +lat_0={key[0]} +lon_0={key[1]} +datum=WGS84 "
                                "+units=m +no_defs")
    return Frame(pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True),
                 pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True), key)


def validate_geometry(geometry: object, radius_m: float | None) -> shapely.Geometry:
    """GeoJSON → shapely (lon/lat), or ZoneError saying what is wrong and where."""
    if not isinstance(geometry, dict) or geometry.get("type") not in (
            "Polygon", "MultiPolygon", "Point"):
        raise ZoneError("geometry must be a GeoJSON Polygon, MultiPolygon or Point")
    try:
        geom = geojson_shape(geometry)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError,
            shapely.errors.GEOSException) as e:
        raise ZoneError(f"geometry is not valid GeoJSON: {e}") from e
    if geom.is_empty:
        raise ZoneError("geometry is empty")
    coords = shapely.get_coordinates(geom)
    if not np.isfinite(coords).all() or (np.abs(coords[:, 0]) > 180).any() or (
            np.abs(coords[:, 1]) > 90).any():
        raise ZoneError("coordinates must be [lon, lat] within -180..180, -90..90")
    if geom.geom_type == "Point":
        if radius_m is None or not 0 < radius_m <= 100_000:
            raise ZoneError("a Point zone needs radius_m in (0, 100000]: it is a circle")
    elif not geom.is_valid:
        raise ZoneError(f"invalid polygon: {shapely.is_valid_reason(geom)}")
    elif radius_m is not None:
        raise ZoneError("radius_m applies only to a Point zone")
    return geom


@dataclass(slots=True)
class CompiledZone:
    zone: Zone
    frame: Frame
    shape_m: shapely.Geometry | None  # polygons, in the frame (metres)
    boundary_m: shapely.Geometry | None
    circle: tuple[float, float, float] | None  # cx, cy, r in the frame
    bbox: tuple[float, float, float, float] = field(default=(0, 0, 0, 0))  # lon/lat, +buffer

    def depth_m(self, x: float, y: float) -> float:
        """Signed distance to the edge: positive inside, negative outside (metres)."""
        if self.circle is not None:
            cx, cy, r = self.circle
            return r - math.hypot(x - cx, y - cy)
        d = float(shapely.distance(self.boundary_m, shapely.Point(x, y)))
        return d if shapely.contains_xy(self.shape_m, x, y) else -d


def compile_zone(zone: Zone) -> CompiledZone:
    geom = validate_geometry(zone.geometry, zone.radius_m)
    c = geom.centroid
    frame = frame_for(c.y, c.x)
    if geom.geom_type == "Point":
        cx, cy = frame.to_m(c.x, c.y)
        cz = CompiledZone(zone, frame, None, None, (cx, cy, float(zone.radius_m)))
        extent = shapely.Point(cx, cy).buffer(zone.radius_m, quad_segs=CIRCLE_SEGMENTS // 4)
    else:
        # GeoJSON edges are straight in lon/lat (RFC 7946), not in the metric frame: project
        # densified edges, or a 10 km east-west edge would sit ~1 m off its parallel.
        geom = shapely.segmentize(geom, EDGE_STEP_DEG)
        shape_m = shapely.transform(geom, lambda xy: np.column_stack(
            frame.fwd.transform(xy[:, 0], xy[:, 1])))
        shapely.prepare(shape_m)
        cz = CompiledZone(zone, frame, shape_m, shape_m.boundary, None)
        extent = shape_m
    minx, miny, maxx, maxy = extent.bounds
    pad = (zone.buffer_m or 0.0) + 1.0
    xs = np.array([minx - pad, maxx + pad, maxx + pad, minx - pad])
    ys = np.array([miny - pad, miny - pad, maxy + pad, maxy + pad])
    lons, lats = frame.inv.transform(xs, ys)
    cz.bbox = (float(min(lons)), float(min(lats)), float(max(lons)), float(max(lats)))
    return cz


class ZoneIndex:
    """All zones, compiled once; exclusion zones found by an STRtree of their boxes."""

    def __init__(self, zones: list[Zone], previous: ZoneIndex | None = None,
                 history: list[Zone] = ()) -> None:
        """`previous`: an older index whose compiled zones are reused where unchanged, so that
        enrolling a subject does not recompile thousands of zones. `history`: earlier versions
        of edited zones (same id; `created_at`..`deleted_at` is when each was in force)."""
        self.by_id: dict[int, CompiledZone] = {}
        self.errors: dict[int, str] = {}
        self.history: dict[int, list[CompiledZone]] = {}
        old_versions = {(c.zone.id, c.zone.created_at): c for cs in
                        (previous.history.values() if previous else ()) for c in cs}
        for z in zones:
            old = previous.by_id.get(z.id) if previous else None
            if old is not None and old.zone == z:
                self.by_id[z.id] = old
                continue
            try:
                self.by_id[z.id] = compile_zone(z)
            except ZoneError as e:  # stored before validation existed: skip it, say why
                self.errors[z.id] = str(e)
        for z in history:
            old = old_versions.get((z.id, z.created_at))
            try:
                c = old if old is not None and old.zone == z else compile_zone(z)
            except ZoneError:
                continue
            self.history.setdefault(z.id, []).append(c)
        past = [c for cs in self.history.values() for c in cs]
        self._spatial = [c for c in (*self.by_id.values(), *past) if c.zone.kind == "exclusion"
                         or c.zone.schedule is not None]
        self._tree = shapely.STRtree([shapely.box(*c.bbox) for c in self._spatial])
        # Scheduled exclusion zones, asked for per subject by the timers (`next_due`): usually
        # none, and then no per-subject query at all.
        self._timed = [c for c in self._spatial
                       if c.zone.kind == "exclusion" and c.zone.schedule is not None]
        self._timed_tree = shapely.STRtree([shapely.box(*c.bbox) for c in self._timed])
        # Inclusion zones are judged wherever the subject is, so they are found by owner, not
        # by place: per subject, and per jurisdiction for shared ones (e.g. a county border).
        self._incl_subject: dict[int, list[CompiledZone]] = {}
        self._incl_shared: dict[int, list[CompiledZone]] = {}
        for c in self.by_id.values():
            if c.zone.kind == "inclusion":
                owner, key = ((self._incl_subject, c.zone.subject_id)
                              if c.zone.subject_id is not None
                              else (self._incl_shared, c.zone.jurisdiction_id))
                owner.setdefault(key, []).append(c)

    def __len__(self) -> int:
        return len(self.by_id)

    @property
    def spatial(self) -> bool:
        """Whether any zone is found by place (`near`): none, and no fix needs the query."""
        return bool(self._spatial)

    def near(self, lons: np.ndarray, lats: np.ndarray) -> list[list[CompiledZone]]:
        """Per point, the exclusion (and scheduled) zones whose box contains it: one query."""
        return _query(self._tree, self._spatial, lons, lats)

    def near_scheduled_exclusions(self, lons: np.ndarray, lats: np.ndarray
                                  ) -> list[list[CompiledZone]]:
        """`near`, for the scheduled exclusion zones only."""
        return _query(self._timed_tree, self._timed, lons, lats)

    def at(self, zone_id: int, t: datetime) -> CompiledZone | None:
        """The version of a zone in force at `t` (the current one if none was)."""
        for c in self.history.get(zone_id, ()):
            if c.zone.exists_at(t):
                return c
        return self.by_id.get(zone_id)

    def inclusion_for(self, subject: Subject) -> list[CompiledZone]:
        out = list(self._incl_subject.get(subject.id, ()))
        for j in subject.jurisdiction_path:
            out.extend(self._incl_shared.get(j, ()))
        return out


def _query(tree: shapely.STRtree, zones: list[CompiledZone], lons: np.ndarray,
           lats: np.ndarray) -> list[list[CompiledZone]]:
    """Per point, the zones of `tree` (built over `zones`' boxes) whose box contains it."""
    out: list[list[CompiledZone]] = [[] for _ in range(len(lons))]
    if not zones or not len(lons):
        return out
    pts, hits = tree.query(shapely.points(lons, lats), predicate="intersects")
    for p, h in zip(pts.tolist(), hits.tolist(), strict=True):
        out[p].append(zones[h])
    return out
