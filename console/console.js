// netd's console: live per-tenant plots (uPlot) from the daemon's event stream, and every
// change through the same validated API as the CLI. No build step: plain browser JS.
'use strict';

const HISTORY_S = 60;
const MBIT = 1e6;
const COLOURS = ['#1565c0', '#2e7d32', '#ef6c00', '#6a1b9a', '#00838f', '#ad1457', '#4e342e', '#455a64'];

// Everything the page knows; the browser tests read it (window.netdConsole).
const state = {
  snapshot: null,
  lastEvent: 0,
  events: 0,
  // tenant -> {t, rate, entitlement}: seconds, and Mbit/s delivered to the tenant's servers
  // (what the shaper let through) against what it is entitled to.
  series: new Map(),
  charts: new Map(), // tenant -> uPlot
  drag: null,
  lastPlotted(tenant) {
    const s = this.series.get(tenant);
    if (!s || s.t.length === 0) return null;
    const i = s.t.length - 1;
    return { rate: s.rate[i] * MBIT, entitlement: s.entitlement[i] * MBIT };
  },
};
window.netdConsole = state;

const $ = (selector) => document.querySelector(selector);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};
const mbit = (bps) => (bps / MBIT).toFixed(1);

// --- The API ------------------------------------------------------------------------

async function post(path, body) {
  const response = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    credentials: 'same-origin',
  });
  let answer;
  try {
    answer = await response.json();
  } catch {
    answer = { ok: false, error: `HTTP ${response.status}` };
  }
  return answer;
}

// Apply a change; show the daemon's own error when it refuses. Returns true if applied.
async function change(path, body) {
  const answer = await post(path, body);
  showError(answer.ok ? '' : answer.error || 'refused');
  return answer.ok;
}

function showError(message) {
  $('#error').textContent = message;
}

// --- Signing in and staying connected -------------------------------------------------

async function start() {
  const probe = await (await fetch('/api/session', { credentials: 'same-origin' })).json();
  if (!probe.result.signed_in) {
    $('#login').hidden = false;
    $('#app').hidden = true;
    return;
  }
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#logout').hidden = false;
  connect();
}

$('#login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const answer = await post('/api/login', { token: $('#token').value });
  $('#token').value = '';
  if (answer.ok) {
    $('#login-error').textContent = '';
    start();
  } else {
    $('#login-error').textContent = answer.error;
  }
});

$('#logout').addEventListener('click', async () => {
  await post('/api/logout', {});
  location.reload();
});

let source = null;
function connect() {
  if (source) source.close();
  source = new EventSource('/api/events');
  source.addEventListener('snapshot', (event) => {
    state.lastEvent = Date.now();
    state.events += 1;
    update(JSON.parse(event.data));
  });
  // EventSource retries by itself after a dropped stream; after a refusal (a restarted
  // daemon has a new session) it gives up, so look again.
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) setTimeout(start, 1000);
  };
}

setInterval(() => {
  const live = Date.now() - state.lastEvent < 2000;
  const conn = $('#conn');
  conn.textContent = live ? 'live' : 'disconnected: reconnecting…';
  conn.className = `conn ${live ? 'up' : 'down'}`;
}, 500);

// --- Rendering a snapshot -------------------------------------------------------------

function update(snapshot) {
  state.snapshot = snapshot;
  const { status } = snapshot;
  $('#topology').textContent = status.topology;
  $('#capacity').textContent = `of ${mbit(status.capacity_bps)} Mbit/s`;
  record(snapshot);
  if (!state.drag) renderBar(status);
  renderTenants(snapshot);
  renderServers(snapshot);
  renderChanges(snapshot.changes);
  renderTenantChoice(status.tenants);
}

function record(snapshot) {
  const t = snapshot.unix_ms / 1000;
  for (const tenant of snapshot.status.tenants) {
    let s = state.series.get(tenant.name);
    if (!s) {
      s = { t: [], rate: [], entitlement: [], up: [], upEntitlement: [], down: [], downEntitlement: [] };
      state.series.set(tenant.name, s);
    }
    const uplink = tenant.uplink || { upload: {}, download: {} };
    const values = {
      t,
      rate: tenant.rates.out_1s_bps / MBIT,
      entitlement: tenant.entitlement_bps / MBIT,
      up: (uplink.upload.rate_1s_bps ?? 0) / MBIT,
      upEntitlement: (uplink.upload.entitlement_bps ?? 0) / MBIT,
      down: (uplink.download.rate_1s_bps ?? 0) / MBIT,
      downEntitlement: (uplink.download.entitlement_bps ?? 0) / MBIT,
    };
    for (const [key, value] of Object.entries(values)) s[key].push(value);
    while (s.t.length && s.t[0] < t - HISTORY_S) {
      for (const key of Object.keys(values)) s[key].shift();
    }
  }
}

// The capacity as one bar: each tenant's guarantee, then what is unallocated.
function renderBar(status) {
  const bar = $('#bar');
  bar.replaceChildren();
  const capacity = status.capacity_bps;
  let used = 0;
  status.tenants.forEach((tenant, i) => {
    used += tenant.guaranteed_bps;
    bar.append(el('div', {
      className: 'segment',
      title: `${tenant.name}: ${mbit(tenant.guaranteed_bps)} Mbit/s guaranteed`,
      textContent: `${tenant.name} ${mbit(tenant.guaranteed_bps)}`,
    }));
    const segment = bar.lastChild;
    segment.style.width = `${(tenant.guaranteed_bps / capacity) * 100}%`;
    segment.style.background = COLOURS[i % COLOURS.length];
    segment.dataset.tenant = tenant.name;
  });
  const free = el('div', { className: 'segment free', textContent: `unallocated ${mbit(capacity - used)}` });
  free.style.flex = '1';
  bar.append(free);
  // A handle after every tenant: between it and the next tenant, or the unallocated part.
  let offset = 0;
  status.tenants.forEach((tenant, i) => {
    offset += tenant.guaranteed_bps;
    const handle = el('div', { className: 'handle', title: 'drag to move guarantee' });
    handle.style.left = `${(offset / capacity) * 100}%`;
    handle.dataset.index = String(i);
    handle.dataset.tenant = tenant.name;
    handle.addEventListener('pointerdown', (event) => startDrag(event, i));
    bar.append(handle);
  });
}

function startDrag(event, index) {
  const { status } = state.snapshot;
  const left = status.tenants[index];
  const right = status.tenants[index + 1] || null;
  const free = status.capacity_bps - status.tenants.reduce((sum, t) => sum + t.guaranteed_bps, 0);
  state.drag = {
    x: event.clientX,
    width: $('#bar').getBoundingClientRect().width,
    capacity: status.capacity_bps,
    left: { name: left.name, from: left.guaranteed_bps, to: left.guaranteed_bps },
    right: right ? { name: right.name, from: right.guaranteed_bps, to: right.guaranteed_bps } : null,
    free,
  };
  // On the window: the bar (handles included) is drawn anew at every move.
  event.preventDefault();
  window.addEventListener('pointermove', moveDrag);
  window.addEventListener('pointerup', endDrag, { once: true });
}

// Move guarantee by whole Mbit/s; neither side goes below 1 Mbit/s.
function moveDrag(event) {
  const drag = state.drag;
  if (!drag) return;
  const delta = Math.round(((event.clientX - drag.x) / drag.width) * drag.capacity / MBIT) * MBIT;
  const room = drag.right ? drag.right.from - MBIT : drag.free;
  const moved = Math.max(MBIT - drag.left.from, Math.min(delta, room));
  drag.left.to = drag.left.from + moved;
  if (drag.right) drag.right.to = drag.right.from - moved;
  const preview = structuredClone(state.snapshot.status);
  for (const side of [drag.left, drag.right].filter(Boolean)) {
    preview.tenants.find((t) => t.name === side.name).guaranteed_bps = side.to;
  }
  renderBar(preview);
}

async function endDrag() {
  window.removeEventListener('pointermove', moveDrag);
  const drag = state.drag;
  const sides = [drag.left, drag.right].filter((side) => side && side.to !== side.from);
  if (sides.length > 0) {
    const rates = sides.map((side) => ({ tenant: side.name, guaranteed: `${side.to / MBIT}mbit` }));
    await change('/api/set-rates', { rates });
  }
  state.drag = null;
  renderBar(state.snapshot.status);
}

// One card per tenant: its plot and its numbers; ceiling and weight editable in place.
function renderTenants(snapshot) {
  const container = $('#tenants');
  const names = new Set(snapshot.status.tenants.map((t) => t.name));
  for (const card of [...container.children]) {
    if (!names.has(card.dataset.tenant)) {
      for (const key of [card.dataset.tenant, `${card.dataset.tenant}\u0000uplink`]) {
        state.charts.get(key)?.destroy();
        state.charts.delete(key);
      }
      card.remove();
    }
  }
  for (const tenant of snapshot.status.tenants) {
    let card = container.querySelector(`[data-tenant="${CSS.escape(tenant.name)}"]`);
    if (!card) card = newTenantCard(tenant.name, container);
    fillTenantCard(card, tenant, snapshot);
  }
}

function newTenantCard(name, container) {
  const remove = el('button', { type: 'button', textContent: 'remove' });
  remove.addEventListener('click', () => change('/api/remove-tenant', { name }));
  const plot = el('div', { className: 'plot' });
  const uplinkPlot = el('div', { className: 'plot uplink' });
  const card = el('div', { className: 'tenant' }, el('h3', {}, el('span', { textContent: name }), remove), plot, uplinkPlot, el('table', { className: 'numbers' }));
  card.dataset.tenant = name;
  container.append(card);
  const chart = new uPlot({
    width: 400,
    height: 150,
    series: [
      {},
      { label: 'delivered Mbit/s', stroke: '#1565c0', width: 2 },
      { label: 'entitlement Mbit/s', stroke: '#ef6c00', dash: [6, 4] },
    ],
    axes: [{}, { size: 50 }],
  }, [[], [], []], plot);
  state.charts.set(name, chart);
  return card;
}

// The uplink's plot, made the first time a snapshot shows the tenant routed.
function uplinkChart(card, name) {
  const key = `${name}\u0000uplink`;
  if (!state.charts.has(key)) {
    state.charts.set(key, new uPlot({
      width: 400,
      height: 150,
      series: [
        {},
        { label: 'upload Mbit/s', stroke: '#2e7d32', width: 2 },
        { label: 'upload entitlement', stroke: '#2e7d32', dash: [6, 4] },
        { label: 'download Mbit/s', stroke: '#6a1b9a', width: 2 },
        { label: 'download entitlement', stroke: '#6a1b9a', dash: [6, 4] },
      ],
      axes: [{}, { size: 50 }],
    }, [[], [], [], [], []], card.querySelector('.plot.uplink')));
  }
  return state.charts.get(key);
}

function fillTenantCard(card, tenant, snapshot) {
  const s = state.series.get(tenant.name);
  state.charts.get(tenant.name)?.setData([s.t, s.rate, s.entitlement]);
  if (tenant.uplink) {
    uplinkChart(card, tenant.name).setData([s.t, s.up, s.upEntitlement, s.down, s.downEntitlement]);
  }
  const counters = snapshot.stats.tenants.find((t) => t.tenant === tenant.name);
  const drops = counters ? dropsText(counters.counters.drops) : '';
  const rows = [
    ['delivered (1 s)', `${mbit(tenant.rates.out_1s_bps)} Mbit/s`],
    ['sent (1 s)', `${mbit(tenant.rates.in_1s_bps)} Mbit/s`],
    ['entitlement', `${mbit(tenant.entitlement_bps)} Mbit/s`],
    ['guaranteed', `${mbit(tenant.guaranteed_bps)} Mbit/s`],
    ['ceiling', editable(card, tenant, 'ceiling', `${tenant.ceiling_bps / MBIT}mbit`)],
    ['weight', editable(card, tenant, 'weight', String(tenant.weight))],
    ['queue', `${tenant.queued_frames} frames, ${tenant.queued_bytes} B`],
    ['drops', drops || 'none'],
  ];
  if (tenant.uplink) {
    for (const [way, d] of [['upload', tenant.uplink.upload], ['download', tenant.uplink.download]]) {
      rows.push([`uplink ${way}`, `${mbit(d.rate_1s_bps)} of ${mbit(d.entitlement_bps)} Mbit/s, queue ${d.queued_bytes} B, dropped ${d.dropped_bytes} B`]);
    }
  }
  // (uPlot's legend is a table too.)
  const table = card.querySelector('table.numbers');
  // Rebuilding would lose what the operator is typing: only text cells change then.
  if (table.rows.length !== rows.length) {
    table.replaceChildren(...rows.map(([k]) => el('tr', {}, el('th', { textContent: k }), el('td'))));
  }
  rows.forEach(([, value], i) => {
    const cell = table.rows[i].cells[1];
    if (typeof value === 'string') cell.textContent = value;
    else if (cell.firstChild !== value) cell.replaceChildren(value);
  });
}

// An input for `key` (ceiling or weight) applied on Enter or when it loses focus.
function editable(card, tenant, key, value) {
  const name = `edit-${key}`;
  let input = card.querySelector(`input[name="${name}"]`);
  if (!input) {
    input = el('input', { name, className: 'inline', value });
    input.dataset.tenant = tenant.name;
    const apply = async () => {
      const now = input.value.trim();
      if (now === input.dataset.applied) return;
      const body = { tenant: tenant.name };
      body[key] = key === 'weight' ? Number(now) : now;
      if (!(await change('/api/set-rate', body))) input.value = input.dataset.applied;
      input.dataset.applied = input.value;
    };
    input.addEventListener('keydown', (event) => { if (event.key === 'Enter') input.blur(); });
    input.addEventListener('change', apply);
  }
  if (document.activeElement !== input) {
    input.value = value;
    input.dataset.applied = value;
  }
  return input;
}

function dropsText(drops) {
  return Object.entries(drops)
    .filter(([, n]) => n > 0)
    .map(([reason, n]) => `${reason} ${n}`)
    .join(', ');
}

function renderServers(snapshot) {
  const body = $('#servers tbody');
  body.replaceChildren(...snapshot.status.servers.map((server) => {
    const port = snapshot.stats.ports.find((p) => p.server === server.name);
    const c = port ? port.counters : { rx_frames: 0, tx_frames: 0, drops: {} };
    const remove = el('button', { type: 'button', textContent: 'remove' });
    remove.addEventListener('click', () => change('/api/remove-server', { name: server.name }));
    const row = el('tr', {}, ...[server.name, server.tenant, server.ip, server.mac, server.state,
      `${mbit(server.rates.in_1s_bps)} Mbit/s`, String(c.rx_frames), String(c.tx_frames),
      dropsText(c.drops) || 'none'].map((text) => el('td', { textContent: text })), el('td', {}, remove));
    row.dataset.server = server.name;
    return row;
  }));
}

function renderChanges(changes) {
  const list = $('#changes');
  list.replaceChildren(...changes.slice(-10).reverse().map((c) => {
    const when = new Date(c.unix_ms).toLocaleTimeString();
    const what = c.ok ? c.changes.join('; ') || 'nothing to do' : `refused: ${c.error}`;
    return el('li', { className: c.ok ? '' : 'refused', textContent: `${when} ${c.origin} ${c.action}: ${what}` });
  }));
}

function renderTenantChoice(tenants) {
  const select = document.querySelector('#add-server select');
  const names = tenants.map((t) => t.name);
  if ([...select.options].map((o) => o.value).join() === names.join()) return;
  select.replaceChildren(...names.map((name) => el('option', { value: name, textContent: name })));
}

// --- Adding tenants and servers ---------------------------------------------------------

$('#add-tenant').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const tenant = { guaranteed: form.get('guaranteed') };
  if (form.get('ceiling')) tenant.ceiling = form.get('ceiling');
  if (form.get('weight')) tenant.weight = Number(form.get('weight'));
  if (await change('/api/add-tenant', { name: form.get('name'), tenant })) event.target.reset();
});

$('#add-server').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const server = { tenant: form.get('tenant'), ip: form.get('ip') };
  if (await change('/api/add-server', { name: form.get('name'), server })) event.target.reset();
});

start();
