// Track playback (contract §7 `/playback?subject={id}`): the subject's fixes over a time range
// (REST track endpoint), each with its accuracy circle, a moving marker at a chosen speed, the
// alerts as marks on the timeline, and export of the same range as GeoJSON or CSV.
import * as maplibregl from '/vendor/maplibre-gl/maplibre-gl.mjs';
import {
  api, applyLabels, baseStyle, circle, fmtTime, geometryToMap, loadConfig, loggedIn, t, toMap,
  toggleLang,
} from '/static/common.js';

const sid = Number(new URLSearchParams(location.search).get('subject'));
const state = { fixes: [], alerts: [], i: 0, playing: false, last: 0, simT: 0 };
const $ = (id) => document.getElementById(id);
let map;

const local = (d) => new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
const range = () => ({ from: new Date($('from').value).toISOString(), to: new Date($('to').value).toISOString() });
const fc = (features) => ({ type: 'FeatureCollection', features });

async function load() {
  const { from, to } = range();
  const q = `from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`;
  const track = await (await api(`/api/subjects/${sid}/track?${q}&max_points=20000`)).json();
  state.fixes = track.features.map((f) => ({ lon: f.geometry.coordinates[0], lat: f.geometry.coordinates[1],
    ts: Date.parse(f.properties.ts), acc: f.properties.acc, outlier: f.properties.outlier }));
  state.alerts = (await (await api(`/api/alerts?subject_id=${sid}&since=${encodeURIComponent(from)}&limit=1000`)).json())
    .filter((a) => Date.parse(a.opened_at) < Date.parse(to));
  const good = state.fixes.filter((f) => !f.outlier);
  map.getSource('line').setData(fc(good.length > 1 ? [{ type: 'Feature', properties: {},
    geometry: geometryToMap({ type: 'LineString', coordinates: good.map((f) => [f.lon, f.lat]) }) }] : []));
  map.getSource('fixes').setData(fc(state.fixes.map((f, i) => ({ type: 'Feature', id: i, properties: { outlier: !!f.outlier },
    geometry: { type: 'Point', coordinates: toMap(f.lon, f.lat) } }))));
  map.getSource('acc').setData(fc(state.fixes.filter((f) => f.acc).map((f) => ({ type: 'Feature', properties: {},
    geometry: geometryToMap(circle(f.lon, f.lat, f.acc, 24)) }))));
  map.getSource('alerts').setData(fc(state.alerts.filter((a) => a.position).map((a) => ({ type: 'Feature',
    properties: { type: a.type }, geometry: { type: 'Point', coordinates: toMap(a.position.lon, a.position.lat) } }))));
  $('slider').max = Math.max(0, state.fixes.length - 1);
  $('count').textContent = `${state.fixes.length} ${t('fixes')}`;
  marks();
  if (good.length) {
    const b = new maplibregl.LngLatBounds();
    good.forEach((f) => b.extend(toMap(f.lon, f.lat)));
    map.fitBounds(b, { padding: 40, maxZoom: 16, duration: 0 });
  }
  seek(0);
  window.tether.loaded++;
}

function marks() { // alerts on the timeline, placed by time
  const lo = Date.parse(range().from), hi = Date.parse(range().to);
  $('marks').replaceChildren(...state.alerts.map((a) => {
    const m = document.createElement('button');
    m.type = 'button'; m.className = `mark sev-${a.severity}`; m.title = `${a.type} ${fmtTime(a.opened_at)}`;
    m.style.left = `${(100 * (Date.parse(a.opened_at) - lo)) / (hi - lo)}%`;
    m.onclick = () => seekTime(Date.parse(a.opened_at));
    return m;
  }));
}

function seekTime(ts) {
  const i = state.fixes.findIndex((f) => f.ts >= ts);
  seek(i < 0 ? state.fixes.length - 1 : i);
}

function seek(i) {
  state.i = i;
  const f = state.fixes[i];
  $('slider').value = i;
  if (!f) { $('clock').textContent = ''; return; }
  state.simT = f.ts;
  $('clock').textContent = fmtTime(f.ts) + (f.acc ? ` ±${Math.round(f.acc)} m` : '');
  map.getSource('here').setData(fc([{ type: 'Feature', properties: {}, geometry: { type: 'Point', coordinates: toMap(f.lon, f.lat) } },
    ...(f.acc ? [{ type: 'Feature', properties: {}, geometry: geometryToMap(circle(f.lon, f.lat, f.acc)) }] : [])]));
}

function tick(now) {
  if (!state.playing) return;
  const dt = state.last ? now - state.last : 0;
  state.last = now;
  state.simT += dt * Number($('speed').value);
  let i = state.i;
  while (i + 1 < state.fixes.length && state.fixes[i + 1].ts <= state.simT) i++;
  if (i !== state.i) { const sim = state.simT; seek(i); state.simT = sim; }
  if (i >= state.fixes.length - 1) { toggle(); return; }
  requestAnimationFrame(tick);
}

function toggle() {
  state.playing = !state.playing && state.fixes.length > 1;
  $('play').textContent = t(state.playing ? 'pause' : 'play');
  state.last = 0;
  if (state.playing) requestAnimationFrame(tick);
}

async function download(csv) {
  const { from, to } = range();
  const r = await api(`/api/subjects/${sid}/track?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}&max_points=100000`,
    { headers: csv ? { Accept: 'text/csv' } : {} });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(await r.blob());
  a.download = `subject-${sid}-track.${csv ? 'csv' : 'geojson'}`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function main() {
  applyLabels();
  window.tether = { state, loaded: 0, seek, toggle };
  $('lang').onclick = toggleLang;
  const now = new Date();
  $('to').value = local(new Date(now.getTime() + 60000));
  $('from').value = local(new Date(now.getTime() - 24 * 3600 * 1000));
  const cfg = await loadConfig();
  await loggedIn($('login'));
  try { $('who').textContent = (await (await api(`/api/subjects/${sid}`)).json()).name; } catch { /* shown empty */ }
  map = new maplibregl.Map({ container: 'map', style: baseStyle(cfg), center: [116.4, 39.9], zoom: 3 });
  window.tether.map = map;
  await new Promise((r) => map.on('load', r));
  for (const s of ['line', 'fixes', 'acc', 'alerts', 'here']) map.addSource(s, { type: 'geojson', data: fc([]) });
  map.addLayer({ id: 'acc', type: 'fill', source: 'acc', paint: { 'fill-color': '#457b9d', 'fill-opacity': 0.08 } });
  map.addLayer({ id: 'line', type: 'line', source: 'line', paint: { 'line-color': '#1d3557', 'line-width': 2 } });
  map.addLayer({ id: 'fixes', type: 'circle', source: 'fixes', paint: { 'circle-radius': 3,
    'circle-color': ['case', ['get', 'outlier'], '#aaa', '#1d3557'] } });
  map.addLayer({ id: 'alerts', type: 'circle', source: 'alerts', paint: { 'circle-radius': 7, 'circle-color': '#d62828' } });
  map.addLayer({ id: 'here-acc', type: 'fill', source: 'here', filter: ['==', ['geometry-type'], 'Polygon'],
    paint: { 'fill-color': '#f77f00', 'fill-opacity': 0.25 } });
  map.addLayer({ id: 'here', type: 'circle', source: 'here', filter: ['==', ['geometry-type'], 'Point'],
    paint: { 'circle-radius': 8, 'circle-color': '#f77f00', 'circle-stroke-color': '#000', 'circle-stroke-width': 2 } });
  $('range').onsubmit = (e) => { e.preventDefault(); load(); };
  $('play').onclick = toggle;
  $('slider').oninput = () => seek(Number($('slider').value));
  $('geo').onclick = () => download(false);
  $('csv').onclick = () => download(true);
  await load();
}

main();
