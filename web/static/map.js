// The command-center map (contract §7 `/`): a snapshot from /ws/live, then position deltas
// merged by subject id and applied once per animation frame. Small deltas go through
// GeoJSONSource.updateData (only the changed features travel to the worker); a delta touching
// most features is cheaper as one setData. Selected and alarmed subjects live in a separate,
// never-clustered source so that no cluster hides them.
import * as maplibregl from '/vendor/maplibre-gl/maplibre-gl.mjs';
import {
  alertCard, api, applyLabels, baseStyle, circle, escapeHtml, fmtTime, fromMap, geometryToMap,
  loadConfig, loggedIn, t, toMap, toggleLang, wsUrl,
} from '/static/common.js';

const SET_DATA_SHARE = 0.3; // a delta changing more than this share of features: setData
const VIEWPORT_ABOVE = 2000; // with more subjects, ask the server for the viewport only
const COLORS = { alarm: '#d62828', ack: '#f77f00', silent: '#8d99ae', ok: '#2a9d8f' };

const subjects = new Map(); // id -> {id, name, devices, lon, lat, ts, acc, st, prio}
const alerts = new Map(); // id -> alert (open or acknowledged)
const pending = new Map(); // subject id -> newest position not yet applied
const waiting = []; // {seq, arrived}: deltas received, not yet applied
const state = {
  seq: 0, applied: 0, renderMs: [], applyMs: [], selected: null, muted: false,
  silentAfterS: 900, frame: false, busy: false, snapshotAt: 0, socket: null,
};
let map;

const $ = (id) => document.getElementById(id);
const tsOf = (s) => (s ? Date.parse(s) : 0);

const bySubject = new Map(); // subject id -> 'open' | 'acknowledged' (the most urgent)
function indexAlerts() {
  bySubject.clear();
  for (const a of alerts.values()) {
    if (bySubject.get(a.subject_id) !== 'open') bySubject.set(a.subject_id, a.status);
  }
}

function status(s) {
  const a = bySubject.get(s.id);
  if (a === 'open') return 'alarm';
  if (a) return 'ack';
  if (!s.ts || Date.now() - s.ts > state.silentAfterS * 1000) return 'silent';
  return 'ok';
}
const isPrio = (s) => s.id === state.selected || s.st === 'alarm' || s.st === 'ack';
const feature = (s) => ({
  type: 'Feature', id: s.id,
  geometry: { type: 'Point', coordinates: toMap(s.lon, s.lat) },
  properties: { id: s.id, st: s.st, name: s.name },
});

function rebuild() {
  const main = [], prio = [];
  for (const s of subjects.values()) {
    s.st = status(s);
    s.prio = isPrio(s);
    if (s.lon == null) continue;
    (s.prio ? prio : main).push(feature(s));
  }
  const done = map.getSource('subjects').setData({ type: 'FeatureCollection', features: main });
  map.getSource('priority').setData({ type: 'FeatureCollection', features: prio });
  counts();
  return done;
}

function counts() {
  let online = 0, alarm = 0;
  const cutoff = Date.now() - state.silentAfterS * 1000;
  for (const s of subjects.values()) {
    if (s.ts && s.ts > cutoff) online++;
    if (s.st === 'alarm' || s.st === 'ack') alarm++;
  }
  $('n-monitored').textContent = subjects.size;
  $('n-online').textContent = online;
  $('n-silent').textContent = subjects.size - online;
  $('n-alarm').textContent = alarm;
  $('n-unacked').textContent = [...alerts.values()].filter((a) => a.status === 'open').length;
}

// --- deltas: merged by id as they arrive, applied once per frame -----------------------------
function onPositions(msg, arrived) {
  for (const it of msg.items) {
    const old = pending.get(it.subject_id);
    if (!old || old.ts <= it.ts) pending.set(it.subject_id, it);
  }
  state.seq = msg.seq;
  waiting.push({ seq: msg.seq, arrived });
  schedule();
}

function schedule() {
  if (!state.frame) { state.frame = true; requestAnimationFrame(applyFrame); }
}

function applyFrame() {
  state.frame = false;
  // Backpressure: while the worker still digests the last update, deltas keep merging here
  // (newest per subject) instead of queueing updates the worker would redo tile by tile.
  if (state.busy) return;
  const t0 = performance.now();
  const update = [], add = [];
  let prioDirty = false, statusDirty = false;
  for (const [sid, it] of pending) {
    const s = subjects.get(sid);
    if (!s) continue; // not in the snapshot (enrolled since): shown after the next snapshot
    const ts = tsOf(it.ts);
    if (s.ts && ts < s.ts) continue;
    const had = s.lon != null;
    const was = had ? toMap(s.lon, s.lat) : null;
    s.lon = it.lon; s.lat = it.lat; s.ts = ts; s.acc = it.acc;
    const st = status(s);
    if (st !== s.st) { s.st = st; statusDirty = true; }
    if (s.prio) prioDirty = true;
    else if (!had) add.push(feature(s));
    else update.push({ id: sid, was, newGeometry: { type: 'Point', coordinates: toMap(s.lon, s.lat) } });
  }
  pending.clear();
  let done;
  if (statusDirty || update.length + add.length > SET_DATA_SHARE * subjects.size) {
    done = rebuild(); // colours changed, or most features moved: one setData is cheaper
  } else {
    if (update.length || add.length) done = map.getSource('subjects').updateData({ add, update });
    if (prioDirty) {
      map.getSource('priority').setData({ type: 'FeatureCollection',
        features: [...subjects.values()].filter((s) => s.prio && s.lon != null).map(feature) });
    }
  }
  state.applied = state.seq;
  // a probe: one moved subject in view, to see when its new position is on screen
  const bounds = map.getBounds();
  const u = update.find((c) => bounds.contains(c.newGeometry.coordinates));
  const probe = u && { id: u.id, at: u.newGeometry.coordinates, was: u.was };
  inflight.push({ arrived: waiting.splice(0).map((w) => w.arrived), probe, tile: false });
  if (inflight.length > 40) inflight.shift(); // never seen (panned away): forgotten
  if (done) {
    state.busy = true;
    const free = () => { state.busy = false; if (pending.size) schedule(); };
    done.then(free, free);
  }
  state.applyMs.push(performance.now() - t0);
  if (state.applyMs.length > 500) state.applyMs.shift();
  follow();
  counts();
}

// Time to rendered: a delta's arrival to the first frame that draws it. With a probe (a moved
// subject in view, drawn unclustered): the frame in which the probe is drawn at its new place.
// Without one (all clustered): the first frame after a tile of the source was re-made.
const inflight = [];
function onSourceData(e) {
  if (e.sourceId === 'subjects' && e.tile) for (const g of inflight) g.tile = true;
}
function drawnAt(probe) { // the probe's feature drawn nearer its new place than its old one
  const [x, y] = probe.at, [ox, oy] = probe.was;
  const p = map.project([x, y]);
  const d2 = (c, a, b) => (c[0] - a) ** 2 + (c[1] - b) ** 2;
  return map.queryRenderedFeatures([[p.x - 8, p.y - 8], [p.x + 8, p.y + 8]], { layers: ['subj-points'] })
    .some((f) => f.properties.id === probe.id &&
      d2(f.geometry.coordinates, x, y) < d2(f.geometry.coordinates, ox, oy));
}
function onRendered() {
  if (!inflight.length) return;
  const now = performance.now();
  const unclustered = map.getZoom() >= 12;
  // newest first: once a delta is drawn, so is every older one (newer data replaced theirs)
  for (let i = inflight.length - 1; i >= 0; i--) {
    const g = inflight[i];
    if (g.probe && unclustered ? !drawnAt(g.probe) : !g.tile) continue;
    for (const old of inflight.splice(0, i + 1)) {
      for (const a of old.arrived) state.renderMs.push(now - a);
    }
    break;
  }
  if (state.renderMs.length > 500) state.renderMs.splice(0, state.renderMs.length - 500);
}

function follow() {
  const s = subjects.get(state.selected);
  if (s && $('follow').checked && s.lon != null) {
    map.easeTo({ center: toMap(s.lon, s.lat), duration: 300 });
  }
}

// --- alerts ----------------------------------------------------------------------------------
let audio;
function beep() {
  if (state.muted) return;
  try {
    audio = audio || new AudioContext();
    const o = audio.createOscillator(), g = audio.createGain();
    o.frequency.value = 880; g.gain.value = 0.15;
    o.connect(g).connect(audio.destination);
    o.start(); o.stop(audio.currentTime + 0.25);
  } catch { /* no audio device: the feed still shows it */ }
}

// Alerts judged while the database is away (contract: alert_provisional), by subject, type and
// zone, until the stored alert arrives (or the breach ends first).
const provisional = new Map();
const provKey = (a) => `${a.subject_id}:${a.type}:${a.zone_id ?? 0}`;

function onProvisional(msg) {
  const a = msg.alert;
  if (a.event === 'opened') {
    provisional.set(provKey(a), { ...a, id: `p-${provKey(a)}`, status: 'provisional',
      severity: a.severity || 'high', opened_at: a.at });
    beep();
  } else provisional.delete(provKey(a));
  renderFeed();
}

function onAlert(msg) {
  const a = msg.alert;
  provisional.delete(provKey(a));
  if (a.status === 'resolved') alerts.delete(a.id); else alerts.set(a.id, a);
  indexAlerts();
  if (msg.event === 'opened') beep();
  const s = subjects.get(a.subject_id);
  if (s) { s.st = status(s); s.prio = isPrio(s); }
  renderFeed();
  rebuild();
}

function renderFeed() {
  const feed = $('feed');
  feed.replaceChildren(...[...provisional.values(), ...[...alerts.values()]
    .sort((x, y) => (x.status === y.status ? y.id - x.id : x.status === 'open' ? -1 : 1))]
    .slice(0, 200)
    .map((a) => {
      const li = alertCard(a, subjects.get(a.subject_id)?.name, () => {});
      li.querySelector('.alert-sub').onclick = () => select(a.subject_id, true);
      return li;
    }));
  $('no-alerts').hidden = alerts.size + provisional.size > 0;
}

// --- selection, search -----------------------------------------------------------------------
function select(sid, fly) {
  state.selected = sid;
  for (const s of subjects.values()) s.prio = isPrio(s);
  rebuild();
  const s = subjects.get(sid);
  if (s && s.lon != null && fly) map.flyTo({ center: toMap(s.lon, s.lat), zoom: 15 });
  if (s) $('where').textContent = `${s.name} · ${(s.devices || []).map((d) => d.id).join(', ')}`;
  if (s) showOrder(s);
}

// --- monitoring orders (contract §6): the selected subject's, and the count expiring ---------
const ORDERS_EVERY_MS = 60_000;
async function showOrder(s) {
  let orders;
  try { orders = await (await api(`/api/subjects/${s.id}/orders`)).json(); } catch { return; }
  if (state.selected !== s.id) return;
  const now = Date.now();
  const current = orders.find((o) => o.in_force) || orders[0];
  let text = t('orderNone');
  if (current) {
    const end = current.ended_at || current.ends_at;
    text = `${t(Date.parse(end) <= now ? 'orderEnded' : 'orderUntil')} ${fmtTime(end)}`
      + (current.expiring ? ` · ${t('orderExpiring')}` : '');
  }
  $('where').textContent += ` · ${text}`;
}
async function countExpiring() {
  try {
    const rows = await (await api('/api/stats')).json();
    const ids = new Set(rows.map((r) => r.jurisdiction_id));
    // The top rows of the caller's scope already count everything below them.
    $('n-expiring').textContent = rows.filter((r) => !ids.has(r.parent_id))
      .reduce((n, r) => n + r.orders_expiring, 0);
  } catch { /* the next round tries again */ }
}

function search() {
  const q = $('search').value.trim().toLowerCase();
  const out = $('results');
  if (!q) { out.hidden = true; return; }
  const hits = [];
  for (const s of subjects.values()) {
    if (s.name.toLowerCase().includes(q) ||
        (s.devices || []).some((d) => d.id.toLowerCase().includes(q))) hits.push(s);
    if (hits.length >= 20) break;
  }
  out.replaceChildren(...hits.map((s) => {
    const li = document.createElement('li');
    li.innerHTML = `<button type="button">${escapeHtml(s.name)}
      <small>${escapeHtml((s.devices || []).map((d) => d.id).join(' '))}</small></button>`;
    li.firstChild.onclick = () => { out.hidden = true; select(s.id, true); };
    return li;
  }));
  out.hidden = false;
}

// --- zones -----------------------------------------------------------------------------------
function schedText(z) {
  return (z.schedule || []).map((w) => `${w.days.join(',')} ${w.start}-${w.end}`).join('; ');
}
function zoneFeatures(zones) {
  return zones.map((z) => {
    const g = z.geometry.type === 'Point'
      ? circle(z.geometry.coordinates[0], z.geometry.coordinates[1], z.radius_m || 50)
      : z.geometry;
    const kind = z.kind === 'inclusion' && z.schedule && z.schedule.length ? 'curfew' : z.kind;
    return { type: 'Feature', id: z.id, geometry: geometryToMap(g),
             properties: { kind, name: z.name, schedule: schedText(z) } };
  });
}

// --- the socket ------------------------------------------------------------------------------
function onSnapshot(msg) {
  subjects.clear(); alerts.clear();
  state.silentAfterS = msg.silent_after_s || state.silentAfterS;
  for (const a of msg.alerts || []) alerts.set(a.id, a);
  indexAlerts();
  for (const s of msg.subjects) {
    const p = s.last_position;
    subjects.set(s.id, { id: s.id, name: s.name, devices: s.devices, lon: p ? p.lon : null,
                         lat: p ? p.lat : null, ts: p ? tsOf(p.ts) : 0, acc: p ? p.acc : null });
  }
  map.getSource('zones').setData({ type: 'FeatureCollection', features: zoneFeatures(msg.zones) });
  state.snapshotAt = performance.now();
  rebuild();
  renderFeed();
  sendViewport();
}

function sendViewport() {
  const ws = state.socket;
  if (!ws || ws.readyState !== 1) return;
  if (subjects.size <= VIEWPORT_ABOVE) { ws.send(JSON.stringify({ type: 'viewport', bbox: null })); return; }
  const b = map.getBounds();
  const [w, s] = fromMap(b.getWest(), b.getSouth()), [e, n] = fromMap(b.getEast(), b.getNorth());
  const pad = (e - w) * 0.25; // a margin, so a small pan shows positions at once
  ws.send(JSON.stringify({ type: 'viewport',
    bbox: [Math.max(-180, w - pad), Math.max(-90, s - pad), Math.min(180, e + pad), Math.min(90, n + pad)] }));
}

function connect(backoff = 500) {
  const ws = new WebSocket(wsUrl('/ws/live'));
  state.socket = ws;
  ws.onopen = () => { $('conn').textContent = t('connected'); $('conn').className = 'conn ok'; backoff = 500; };
  ws.onmessage = (ev) => {
    const arrived = performance.now();
    const msg = JSON.parse(ev.data);
    if (msg.type === 'positions') onPositions(msg, arrived);
    else if (msg.type === 'snapshot') onSnapshot(msg);
    else if (msg.type === 'alert') onAlert(msg);
    else if (msg.type === 'alert_provisional') onProvisional(msg);
  };
  ws.onclose = (ev) => {
    $('conn').textContent = t('disconnected'); $('conn').className = 'conn down';
    if (ev.code === 1008) { sessionStorage.removeItem('tether.token'); location.reload(); return; }
    setTimeout(() => connect(Math.min(backoff * 2, 10000)), backoff);
  };
}

function addLayers() {
  map.addSource('zones', { type: 'geojson', data: { type: 'FeatureCollection', features: [] } });
  const zoneColor = ['match', ['get', 'kind'], 'exclusion', '#d62828', 'curfew', '#6a4c93', '#2b9348'];
  map.addLayer({ id: 'zone-fill', type: 'fill', source: 'zones',
                 paint: { 'fill-color': zoneColor, 'fill-opacity': 0.15 } });
  map.addLayer({ id: 'zone-line', type: 'line', source: 'zones', paint: { 'line-color': zoneColor,
    'line-width': 2, 'line-dasharray': ['case', ['==', ['get', 'kind'], 'curfew'], ['literal', [2, 1]], ['literal', [1, 0]]] } });
  map.addSource('subjects', { type: 'geojson', cluster: true, clusterMaxZoom: 11, clusterRadius: 40,
                              data: { type: 'FeatureCollection', features: [] } });
  map.addSource('priority', { type: 'geojson', data: { type: 'FeatureCollection', features: [] } });
  map.addLayer({ id: 'clusters', type: 'circle', source: 'subjects', filter: ['has', 'point_count'],
    paint: { 'circle-color': '#457b9d', 'circle-opacity': 0.8, 'circle-stroke-color': '#fff', 'circle-stroke-width': 1,
             'circle-radius': ['step', ['get', 'point_count'], 10, 50, 16, 500, 22, 5000, 30] } });
  const color = ['match', ['get', 'st'], 'alarm', COLORS.alarm, 'ack', COLORS.ack, 'silent', COLORS.silent, COLORS.ok];
  map.addLayer({ id: 'subj-points', type: 'circle', source: 'subjects', filter: ['!', ['has', 'point_count']],
    paint: { 'circle-color': color, 'circle-radius': 5, 'circle-stroke-color': '#fff', 'circle-stroke-width': 1 } });
  map.addLayer({ id: 'prio-points', type: 'circle', source: 'priority',
    paint: { 'circle-color': color, 'circle-radius': 8, 'circle-stroke-color': '#000', 'circle-stroke-width': 2 } });
}

function exposeForTests() {
  window.tether = {
    map, state, subjects, alerts,
    get seq() { return state.seq; },
    get applied() { return state.applied; },
    select: (sid) => select(sid, true),
    /** Where the subject's marker is drawn ([lon, lat] on the basemap), or null. */
    rendered(sid) {
      const f = map.queryRenderedFeatures({ layers: ['subj-points', 'prio-points'] })
        .find((x) => x.properties.id === sid);
      return f ? f.geometry.coordinates : null;
    },
    renderedCount: () => map.queryRenderedFeatures({ layers: ['subj-points', 'prio-points'] }).length,
  };
}

async function main() {
  applyLabels();
  $('lang').onclick = () => { toggleLang(); renderFeed(); };
  $('mute').onclick = () => {
    state.muted = !state.muted;
    $('mute').textContent = t(state.muted ? 'unmute' : 'mute');
  };
  $('search').oninput = search;
  const cfg = await loadConfig();
  state.silentAfterS = cfg.silent_after_s;
  await loggedIn($('login'));
  map = new maplibregl.Map({ container: 'map', style: baseStyle(cfg), center: [116.4, 39.9], zoom: 3,
                             attributionControl: { compact: true } });
  exposeForTests();
  map.addControl(new maplibregl.NavigationControl(), 'top-left');
  map.on('render', onRendered);
  map.on('sourcedata', onSourceData);
  map.on('moveend', sendViewport);
  map.on('click', (e) => {
    const hit = map.queryRenderedFeatures(e.point, { layers: ['subj-points', 'prio-points', 'clusters'] })[0];
    if (hit && hit.properties.point_count) {
      map.easeTo({ center: e.lngLat, zoom: map.getZoom() + 2 });
    } else if (hit) select(hit.properties.id, false);
    else {
      const [lon, lat] = fromMap(e.lngLat.lng, e.lngLat.lat); // a GCJ-02 click back to WGS-84
      $('where').textContent = `WGS-84 ${lat.toFixed(6)}, ${lon.toFixed(6)}`;
    }
  });
  map.on('click', 'zone-fill', (e) => {
    const p = e.features[0].properties;
    new maplibregl.Popup().setLngLat(e.lngLat)
      .setHTML(`<b>${escapeHtml(p.name)}</b><br>${escapeHtml(t(p.kind))} ${escapeHtml(p.schedule || '')}`)
      .addTo(map);
  });
  await new Promise((r) => map.on('load', r));
  addLayers();
  setInterval(() => { if (subjects.size) rebuild(); }, 30000); // subjects turning silent
  countExpiring();
  setInterval(countExpiring, ORDERS_EVERY_MS);
  connect();
}

main();
