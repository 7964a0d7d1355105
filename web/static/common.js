// Shared by the pages: labels (中文 / English), login, REST, datum conversion, geometry helpers.
// Plain ES module, no framework: the pages must stay fast on a wall screen and a cheap phone.

const LABELS = {
  zh: {
    title: 'Tether 指挥中心', officer: 'Tether 民警', playback: '轨迹回放',
    username: '用户名', password: '密码', login: '登录', logout: '退出', loginFailed: '登录失败',
    monitored: '在管', online: '在线', silent: '失联', alarm: '报警', unacked: '未确认',
    alerts: '报警', ack: '确认', resolve: '处置完毕', note: '备注', mute: '静音', unmute: '声音',
    follow: '跟随', search: '搜索姓名或设备', noAlerts: '暂无报警', notify: '开启通知',
    from: '开始', to: '结束', load: '加载', play: '播放', pause: '暂停', speed: '速度',
    exportGeo: '导出 GeoJSON', exportCsv: '导出 CSV', fixes: '定位点', lastPos: '最后位置',
    exclusion: '禁止区', inclusion: '限制区', curfew: '宵禁', connected: '已连接',
    disconnected: '连接断开，重连中', lang: 'English', noteRequired: '处置需填写备注',
    status_open: '未确认', status_acknowledged: '已确认', status_resolved: '已处置',
    status_provisional: '待入库（数据库暂不可用）',
    expiring: '监管令将到期', orderUntil: '监管令至', orderEnded: '监管令已结束',
    orderNone: '无监管令记录', orderExpiring: '7 日内到期',
  },
  en: {
    title: 'Tether command center', officer: 'Tether officer', playback: 'Track playback',
    username: 'User name', password: 'Password', login: 'Log in', logout: 'Log out',
    loginFailed: 'Login failed', monitored: 'Monitored', online: 'Online', silent: 'Silent',
    alarm: 'In alarm', unacked: 'Unacknowledged', alerts: 'Alerts', ack: 'Acknowledge',
    resolve: 'Resolve', note: 'Note', mute: 'Mute', unmute: 'Sound', follow: 'Follow',
    search: 'Search name or device', noAlerts: 'No alerts', notify: 'Enable notifications',
    from: 'From', to: 'To', load: 'Load', play: 'Play', pause: 'Pause', speed: 'Speed',
    exportGeo: 'Export GeoJSON', exportCsv: 'Export CSV', fixes: 'fixes', lastPos: 'Last position',
    exclusion: 'Exclusion', inclusion: 'Inclusion', curfew: 'Curfew', connected: 'Connected',
    disconnected: 'Disconnected, reconnecting', lang: '中文', noteRequired: 'A note is required',
    status_open: 'open', status_acknowledged: 'acknowledged', status_resolved: 'resolved',
    status_provisional: 'not yet stored (database away)',
    expiring: 'Orders expiring', orderUntil: 'Order until', orderEnded: 'Order ended',
    orderNone: 'No order recorded', orderExpiring: 'ends within 7 days',
  },
};

export let lang = localStorage.getItem('tether.lang') ||
  ((navigator.language || 'zh').toLowerCase().startsWith('zh') ? 'zh' : 'en');
export const t = (k) => (LABELS[lang] && LABELS[lang][k]) || LABELS.en[k] || k;

/** Fills every [data-t] element's text (and [data-tp] placeholders) in the current language. */
export function applyLabels(root = document) {
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  root.querySelectorAll('[data-t]').forEach((el) => { el.textContent = t(el.dataset.t); });
  root.querySelectorAll('[data-tp]').forEach((el) => { el.placeholder = t(el.dataset.tp); });
}

export function toggleLang() {
  lang = lang === 'zh' ? 'en' : 'zh';
  localStorage.setItem('tether.lang', lang);
  applyLabels();
}

// --- session ---------------------------------------------------------------------------------
export const token = () => sessionStorage.getItem('tether.token');
export function logout() { sessionStorage.removeItem('tether.token'); location.reload(); }

export async function login(username, password) {
  const r = await fetch('/api/auth/token', {
    method: 'POST', body: new URLSearchParams({ username, password }),
  });
  if (!r.ok) throw new Error(`${t('loginFailed')} (${r.status})`);
  const body = await r.json();
  sessionStorage.setItem('tether.token', body.access_token);
  return body.access_token;
}

/** Shows the login form until a token exists, then resolves. */
export function loggedIn(form) {
  return new Promise((resolve) => {
    if (token()) { form.hidden = true; resolve(token()); return; }
    form.hidden = false;
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const out = form.querySelector('.error');
      try {
        await login(form.username.value, form.password.value);
        form.hidden = true;
        resolve(token());
      } catch (e) { out.textContent = e.message; }
    });
  });
}

export async function api(path, opts = {}) {
  const r = await fetch(path, {
    ...opts,
    headers: { Authorization: `Bearer ${token()}`, 'Content-Type': 'application/json',
               ...(opts.headers || {}) },
  });
  if (r.status === 401) { logout(); throw new Error('session ended'); }
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return r;
}

export const ackAlert = (id, note) =>
  api(`/api/alerts/${id}/ack`, { method: 'POST', body: JSON.stringify(note ? { note } : {}) });
export const resolveAlert = (id, note) =>
  api(`/api/alerts/${id}/resolve`, { method: 'POST', body: JSON.stringify({ note }) });

export function wsUrl(path) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}${path}?token=${encodeURIComponent(token())}`;
}

// --- datum: positions are WGS-84; a GCJ-02 basemap needs them shifted to be drawn right -------
let gcj = false;
export async function loadConfig() {
  const cfg = await (await fetch('/config.json')).json();
  gcj = cfg.tile_datum === 'gcj02';
  return cfg;
}
/** WGS-84 [lon, lat] -> what to draw on the basemap. */
export function toMap(lon, lat) {
  return gcj ? window.gcoord.transform([lon, lat], window.gcoord.WGS84, window.gcoord.GCJ02)
             : [lon, lat];
}
/** A point on the basemap (a click) -> WGS-84 [lon, lat]. */
export function fromMap(lon, lat) {
  return gcj ? window.gcoord.transform([lon, lat], window.gcoord.GCJ02, window.gcoord.WGS84)
             : [lon, lat];
}
export function geometryToMap(g) {
  const ring = (r) => r.map(([x, y]) => toMap(x, y));
  if (g.type === 'Polygon') return { type: 'Polygon', coordinates: g.coordinates.map(ring) };
  if (g.type === 'MultiPolygon') {
    return { type: 'MultiPolygon', coordinates: g.coordinates.map((p) => p.map(ring)) };
  }
  if (g.type === 'Point') return { type: 'Point', coordinates: toMap(...g.coordinates) };
  return g;
}

/** A circle of radius_m around [lon, lat] as a GeoJSON Polygon (WGS-84). */
export function circle(lon, lat, radiusM, steps = 48) {
  const ring = [];
  const dLat = radiusM / 111320;
  const dLon = radiusM / (111320 * Math.max(Math.cos(lat * Math.PI / 180), 1e-6));
  for (let i = 0; i <= steps; i++) {
    const a = (i / steps) * 2 * Math.PI;
    ring.push([lon + dLon * Math.cos(a), lat + dLat * Math.sin(a)]);
  }
  return { type: 'Polygon', coordinates: [ring] };
}

/** The built-in basemap: Natural Earth land, lakes, rivers (mapeo-offline-map), no network. */
export function baseStyle(cfg) {
  const sources = {
    land: { type: 'geojson', data: '/vendor/basemap/land.json' },
    lakes: { type: 'geojson', data: '/vendor/basemap/lakes.json' },
    rivers: { type: 'geojson', data: '/vendor/basemap/rivers.json' },
  };
  const offline = cfg.tile_datum === 'gcj02' && cfg.tile_url ? 'none' : 'visible';
  const layers = [
    { id: 'ocean', type: 'background', paint: { 'background-color': '#a9cbe8' } },
    { id: 'land', type: 'fill', source: 'land', paint: { 'fill-color': '#efe9dc' },
      layout: { visibility: offline } },
    { id: 'lakes', type: 'fill', source: 'lakes', paint: { 'fill-color': '#a9cbe8' },
      layout: { visibility: offline } },
    { id: 'rivers', type: 'line', source: 'rivers',
      paint: { 'line-color': '#8fb8dc', 'line-width': 1 }, layout: { visibility: offline } },
  ];
  if (cfg.tile_url) {
    sources.tiles = { type: 'raster', tiles: [cfg.tile_url], tileSize: 256,
                      attribution: cfg.tile_attribution || '' };
    layers.push({ id: 'tiles', type: 'raster', source: 'tiles' });
  }
  return { version: 8, sources, layers };
}

export function fmtTime(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  return d.toLocaleString(lang === 'zh' ? 'zh-CN' : 'en-GB', { hour12: false });
}

export function escapeHtml(s) {
  return String(s ?? '').replace(/[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

/** An alert card with acknowledge / resolve-with-note controls; `onDone` after a change. */
export function alertCard(a, subjectName, onDone) {
  const li = document.createElement('li');
  li.className = `alert sev-${a.severity} st-${a.status}`;
  li.dataset.alertId = a.id;
  li.innerHTML = `<div class="alert-head"><b>${escapeHtml(a.type)}</b>
    <span class="sev">${escapeHtml(a.severity)}</span>
    <span class="status">${escapeHtml(t('status_' + a.status))}</span></div>
    <div class="alert-sub">${escapeHtml(subjectName || '#' + a.subject_id)} ·
    ${escapeHtml(fmtTime(a.opened_at))}${a.late ? ' · late' : ''}</div>
    <div class="alert-act"><input class="note" aria-label="${t('note')}"
      placeholder="${t('note')}" maxlength="2000">
    <button class="ack" ${a.status !== 'open' ? 'disabled' : ''}>${t('ack')}</button>
    <button class="resolve">${t('resolve')}</button></div>`;
  const note = li.querySelector('.note');
  if (a.provisional) {  // judged while the database is away: nothing to act on until stored
    li.classList.add('provisional');
    for (const el of li.querySelectorAll('.alert-act button, .alert-act input')) el.disabled = true;
    return li;
  }
  li.querySelector('.ack').onclick = async () => {
    await ackAlert(a.id, note.value.trim()); onDone && onDone(a.id, 'acknowledged');
  };
  li.querySelector('.resolve').onclick = async () => {
    if (!note.value.trim()) { note.focus(); note.placeholder = t('noteRequired'); return; }
    await resolveAlert(a.id, note.value.trim()); onDone && onDone(a.id, 'resolved');
  };
  return li;
}
