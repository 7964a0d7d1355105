// The officer's phone (contract §7 `/officer`): live alert inbox from /ws/alerts (scoped by the
// server), acknowledge / resolve with a note, the subject's last position on a small map,
// browser notifications where permitted.
import * as maplibregl from '/vendor/maplibre-gl/maplibre-gl.mjs';
import {
  alertCard, api, applyLabels, baseStyle, fmtTime, loadConfig, loggedIn, t, toMap, toggleLang,
  wsUrl,
} from '/static/common.js';

const alerts = new Map();
const names = new Map();
const state = { received: 0, socket: null, cfg: null };
let minimap, marker;
const $ = (id) => document.getElementById(id);

function render() {
  const list = [...alerts.values()].filter((a) => a.status !== 'resolved')
    .sort((x, y) => (x.status === y.status ? y.id - x.id : x.status === 'open' ? -1 : 1));
  $('inbox').replaceChildren(...list.map((a) => {
    const li = alertCard(a, names.get(a.subject_id), refresh);
    li.querySelector('.alert-sub').onclick = () => show(a);
    return li;
  }));
  $('no-alerts').hidden = list.length > 0;
}

async function refresh(id) { // after our own ack/resolve: the socket also brings the change
  const r = await api(`/api/alerts?subject_id=${alerts.get(id).subject_id}&limit=50`);
  for (const a of await r.json()) if (alerts.has(a.id)) alerts.set(a.id, a);
  render();
}

async function name(sid) {
  if (names.has(sid)) return names.get(sid);
  try {
    const s = await (await api(`/api/subjects/${sid}`)).json();
    names.set(sid, s.name);
    return s.name;
  } catch { return `#${sid}`; }
}

async function show(a) {
  const s = await (await api(`/api/subjects/${a.subject_id}`)).json();
  $('detail').hidden = false;
  $('detail-title').textContent = s.name;
  const p = s.last_position || (a.position && { lat: a.position.lat, lon: a.position.lon, ts: a.position.ts });
  $('detail-pos').textContent = p ? `${t('lastPos')}: ${p.lat.toFixed(5)}, ${p.lon.toFixed(5)} · ${fmtTime(p.ts)}` : '';
  if (!minimap) {
    minimap = new maplibregl.Map({ container: 'minimap', style: baseStyle(state.cfg), center: [116.4, 39.9], zoom: 3 });
    marker = new maplibregl.Marker({ color: '#d62828' });
  }
  if (p) {
    const at = toMap(p.lon, p.lat);
    marker.setLngLat(at).addTo(minimap);
    minimap.jumpTo({ center: at, zoom: 15 });
  }
}

function notify(a) {
  if (!('Notification' in window) || Notification.permission !== 'granted') return;
  const body = `${names.get(a.subject_id) || '#' + a.subject_id} · ${a.severity}`;
  navigator.serviceWorker?.ready.then((reg) => reg.showNotification(a.type, { body, tag: `alert-${a.id}` }))
    .catch(() => new Notification(a.type, { body }));
}

function connect(backoff = 500) {
  const ws = new WebSocket(wsUrl('/ws/alerts'));
  state.socket = ws;
  ws.onopen = () => { $('conn').textContent = t('connected'); $('conn').className = 'conn ok'; backoff = 500; };
  ws.onmessage = async (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === 'alert_provisional' && msg.alert.event === 'opened') {
      // Judged while the database is away: notify now; the stored alert follows.
      const a = msg.alert;
      await name(a.subject_id);
      notify({ ...a, id: `p-${a.subject_id}-${a.type}-${a.zone_id ?? 0}`,
        severity: t('status_provisional') });
      return;
    }
    if (msg.type !== 'alert') return;
    state.received++;
    const a = msg.alert;
    await name(a.subject_id);
    alerts.set(a.id, a);
    if (msg.event === 'opened') notify(a);
    render();
  };
  ws.onclose = (ev) => {
    $('conn').textContent = t('disconnected'); $('conn').className = 'conn down';
    if (ev.code === 1008) { sessionStorage.removeItem('tether.token'); location.reload(); return; }
    // 1013: too far behind; the reload over REST below catches up
    // The API may still be down: a failed reload must not end the reconnecting.
    setTimeout(() => { load().catch(() => {}).finally(() => connect(Math.min(backoff * 2, 10000))); }, backoff);
  };
}

async function load() {
  for (const st of ['open', 'acknowledged']) {
    const r = await api(`/api/alerts?status=${st}&limit=500`);
    for (const a of await r.json()) { alerts.set(a.id, a); await name(a.subject_id); }
  }
  render();
}

async function main() {
  applyLabels();
  $('lang').onclick = () => { toggleLang(); render(); };
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('/officer-sw.js', { scope: '/' }).catch(() => {});
  if ('Notification' in window && Notification.permission === 'default') {
    $('notify').hidden = false;
    $('notify').onclick = () => Notification.requestPermission().then(() => { $('notify').hidden = true; });
  }
  state.cfg = await loadConfig();
  await loggedIn($('login'));
  window.tether = { alerts, state, get received() { return state.received; } };
  await load();
  connect();
}

main();
