// CONNECT console: the car panel and the operator's cards, live over one WebSocket.
// Plain JavaScript, no build step, nothing from the network but this page's own server.
// Every text from a message goes into the page as a text node, never as HTML.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAP_W = 320;
const MAP_H = 240;
const CATEGORY_LABELS = {
  breakdown: "Breakdown",
  puncture: "Puncture",
  flat_battery: "Flat battery",
  key_problem: "Key problem",
  accident: "Accident",
  theft: "Theft",
  vandalism: "Vandalism",
  fire: "Fire",
  other: "Other",
};
const LED_TEXT = {
  off: ["off", "dark: the agent is not running or not ready"],
  ready: ["ready", "idle and healthy"],
  calling: ["calling", "request sent, waiting for the assistance centre"],
  connected: ["connected", "the assistance centre has answered"],
  failed: ["failed", "not delivered in time; the agent keeps trying"],
  cancelled: ["cancelled", "the driver cancelled the call"],
};
const STATE_TEXT = {
  new: "New: awaiting answer",
  received: "Received",
  assigned: "Assigned",
  closed: "Closed",
  rejected: "Rejected",
  cancelled: "Cancelled by the driver",
};

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

// -- DOM builders -----------------------------------------------------------------------------

function fill(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
const h = (tag, attrs, ...children) => fill(document.createElement(tag), attrs, children);
const s = (tag, attrs, ...children) => fill(document.createElementNS(SVG_NS, tag), attrs, children);

// -- formatting -------------------------------------------------------------------------------

const dash = "–";
function text(value) {
  return value === null || value === undefined || value === "" ? dash : String(value);
}
function yesNo(value, yes = "yes", no = "no") {
  return value === null || value === undefined ? dash : value ? yes : no;
}
function num(value, digits = 0, unit = "") {
  if (value === null || value === undefined || Number.isNaN(value)) return dash;
  return `${Number(value).toFixed(digits)}${unit ? "\u00a0" + unit : ""}`;
}
function clock(iso, withMs = false) {
  if (!iso) return dash;
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return text(iso);
  const t = d.toLocaleTimeString("en-GB", { hour12: false });
  return withMs ? `${t}.${String(d.getMilliseconds()).padStart(3, "0")}` : t;
}
function category(name) {
  return CATEGORY_LABELS[name] || text(name);
}
function compass(deg) {
  if (deg === null || deg === undefined) return "";
  const names = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"];
  return names[Math.round(deg / 45) % 8];
}
function shortId(id) {
  return id ? id.slice(0, 8) : dash;
}

// -- the socket -------------------------------------------------------------------------------

let socket = null;
let retryMs = 500;
let config = { hold_ms: 2000, cancel_window_s: 8, categories: [] };
let carState = null;

function setLink(state, label) {
  const link = $("#link");
  link.dataset.state = state;
  link.textContent = label;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws`);
  setLink("connecting", "connecting…");
  socket.addEventListener("open", () => {
    retryMs = 500;
    setLink("live", "live");
  });
  socket.addEventListener("message", (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    (handlers[message.type] || (() => {}))(message);
  });
  socket.addEventListener("close", () => {
    setLink("down", "disconnected: reconnecting");
    releaseButton();
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 5000);
  });
}

function send(message, quiet = false) {
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    if (!quiet) toast("Not connected to the console server");
    return false;
  }
  socket.send(JSON.stringify(message));
  return true;
}

let toastTimer = null;
function toast(message) {
  const el = $("#toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.hidden = true;
  }, 4000);
}

const handlers = {
  hello(m) {
    config = m.config;
    $("#hold-hint").textContent =
      `Hold ${(config.hold_ms / 1000).toFixed(1)} s to call. Hold again within ` +
      `${config.cancel_window_s} s to cancel. Mouse, finger, or Space/Enter while focused.`;
    $("#ops-meta").textContent = `backend on ${config.broker}, topics ${config.root}/+/+`;
    fillCategories(config.categories);
    showCar(m.car);
    showLed(m.led);
    showRoute(m.route);
    $("#agents").replaceChildren();
    for (const agent of m.agents) showAgent(agent);
    $("#invalid").replaceChildren();
    $("#invalid").hidden = true;
    for (const entry of m.invalid) showInvalid(entry);
    for (const card of cardViews.values()) card.root.remove();
    cardViews.clear();
    for (const card of m.cards) showCard(card);
    if (performance.getEntriesByName("console-live").length === 0) performance.mark("console-live");
  },
  led: (m) => showLed(m.led),
  car: (m) => showCar(m.car),
  button: (m) => $("#connect").classList.toggle("remote-pressed", m.pressed && pressedAt === null),
  route: (m) => showRoute(m.route),
  agent: (m) => showAgent(m.agent),
  invalid: (m) => showInvalid(m.invalid),
  card: (m) => showCard(m.card),
  error: (m) => toast(m.message),
};

// -- the CONNECT button -----------------------------------------------------------------------

let pressedAt = null;
let pressedBy = null;
let frame = null;

function pressButton(by) {
  if (pressedAt !== null) return;
  if (!send({ type: "button", pressed: true })) return;
  pressedAt = performance.now();
  pressedBy = by;
  $("#connect").classList.add("pressed");
  tick();
}

function releaseButton() {
  if (pressedAt === null) return;
  const held = performance.now() - pressedAt;
  pressedAt = null;
  pressedBy = null;
  cancelAnimationFrame(frame);
  send({ type: "button", pressed: false }, true); // a closed socket releases on the server
  const button = $("#connect");
  button.classList.remove("pressed", "armed");
  $("#ring").style.strokeDashoffset = "100";
  const enough = held >= config.hold_ms;
  $("#hold-time").textContent = `${(held / 1000).toFixed(1)} s`;
  $("#hold-time").dataset.result = enough ? "long" : "short";
}

function tick() {
  if (pressedAt === null) return;
  const held = performance.now() - pressedAt;
  const fraction = Math.min(1, held / config.hold_ms);
  $("#ring").style.strokeDashoffset = String(100 - fraction * 100);
  $("#connect").classList.toggle("armed", fraction >= 1);
  const label = $("#hold-time");
  label.textContent = `${(held / 1000).toFixed(1)} s`;
  label.dataset.result = "holding";
  frame = requestAnimationFrame(tick);
}

function setupButton() {
  const button = $("#connect");
  button.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    event.preventDefault();
    button.focus();
    button.setPointerCapture(event.pointerId);
    pressButton("pointer");
  });
  for (const name of ["pointerup", "pointercancel", "lostpointercapture"]) {
    button.addEventListener(name, () => {
      if (pressedBy === "pointer") releaseButton();
    });
  }
  button.addEventListener("keydown", (event) => {
    if (event.key !== " " && event.key !== "Enter") return;
    event.preventDefault();
    if (!event.repeat) pressButton("key");
  });
  button.addEventListener("keyup", (event) => {
    if (event.key !== " " && event.key !== "Enter") return;
    event.preventDefault();
    if (pressedBy === "key") releaseButton();
  });
  button.addEventListener("contextmenu", (event) => event.preventDefault());
  button.addEventListener("blur", releaseButton);
  window.addEventListener("blur", releaseButton);
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) releaseButton();
  });
}

// -- the LED and the car's signals ------------------------------------------------------------

function showLed(led) {
  const el = $("#led");
  const mode = led && led.mode ? led.mode : "unknown";
  const [name, description] = LED_TEXT[mode] || ["no LED seen", "waiting for CONNECT_LED frames"];
  el.dataset.mode = mode;
  el.setAttribute("aria-label", `LED ${name}`);
  $("#led-name").textContent = name;
  $("#led-desc").textContent = description;
  const history = $("#led-history");
  history.replaceChildren(
    ...(led ? led.changes : []).map((c) =>
      h("li", { dataset: { mode: c.mode } }, h("span", { class: "dot" }), c.mode, " ",
        h("time", { datetime: c.at }, clock(c.at, true))),
    ),
  );
  if (led) {
    $("#car-meta").textContent =
      `CAN ${config.bus || "bus"} · LED frames ${led.frames}` +
      (led.bad_frames ? ` (${led.bad_frames} bad)` : "");
  }
}

function fillCategories(categories) {
  const select = $("#category");
  if (select.options.length > 1) return;
  for (const name of categories) select.append(h("option", { value: name }, category(name)));
}

function controlValue(car, name) {
  if (!car) return undefined;
  if (name.startsWith("tyre_")) return car.tyres ? car.tyres[name.slice(5)] : undefined;
  for (const group of ["status", "safety"]) {
    if (car[group] && name in car[group]) return car[group][name];
  }
  return undefined;
}

function showCar(car) {
  carState = car;
  const form = $("#controls");
  $("#car-panel").classList.toggle("no-car", !car);
  for (const el of $$("input, select, button", form)) el.disabled = !car && !el.dataset.route && !el.dataset.accuracy;
  $("#connect").disabled = !car;
  if (!car) {
    $("#car-meta").textContent = "no car: start with a CAN channel to drive one";
    return;
  }
  if (document.activeElement !== $("#category")) $("#category").value = car.category || "";
  for (const el of $$("[data-name]", form)) {
    if (el === document.activeElement && el.type !== "checkbox") continue;
    const value = controlValue(car, el.dataset.name);
    if (el.type === "checkbox") el.checked = Boolean(value);
    else el.value = value === null || value === undefined ? "" : String(value);
    showOutput(el);
  }
}

function showOutput(el) {
  const out = $(`output[data-for="${el.dataset.name}"]`);
  if (!out) return;
  const unit = el.dataset.name === "battery_12v_v" ? "V" : "%";
  out.textContent = el.value === "" ? "n/a" : `${Number(el.value).toFixed(1)} ${unit}`;
}

function setupControls() {
  const form = $("#controls");
  form.addEventListener("submit", (event) => event.preventDefault());
  $("#category").addEventListener("change", (event) => {
    send({ type: "category", value: event.target.value || null });
  });
  for (const el of $$("[data-name]", form)) {
    el.addEventListener("input", () => showOutput(el));
    el.addEventListener("change", () => {
      let value;
      if (el.type === "checkbox") value = el.checked;
      else if (el.type === "range" || el.type === "number" || el.dataset.type === "int") {
        value = el.value === "" ? null : Number(el.value);
      } else value = el.value;
      send({ type: "set", name: el.dataset.name, value });
    });
  }
  for (const el of $$("[data-route]", form)) {
    el.addEventListener("click", () => send({ type: "route", action: el.dataset.route }));
  }
  for (const el of $$("[data-accuracy]", form)) {
    el.addEventListener("click", () => send({ type: "accuracy", value: el.dataset.accuracy }));
  }
}

function showRoute(route) {
  const set = $("#route-set");
  set.disabled = !route;
  $("#route-name").textContent = route ? route.name : "no fake gpsd";
  for (const el of $$("[data-route]", set)) {
    el.setAttribute("aria-pressed", String(Boolean(route) && route.mode === el.dataset.route));
  }
  for (const el of $$("[data-accuracy]", set)) {
    el.setAttribute("aria-pressed", String(Boolean(route) && route.accuracy === el.dataset.accuracy));
    if (route && el.dataset.accuracy === route.accuracy) {
      el.title = `about ±${route.accuracy_m} m`;
    }
  }
}

// -- agents and invalid messages --------------------------------------------------------------

function showAgent(agent) {
  const st = agent.status;
  const id = `agent-${agent.vin}`;
  const online = st.state === "online";
  const chip = h("div", { class: "agent", id, dataset: { state: st.state } },
    h("span", { class: "agent-state" }, online ? "online" : "offline"),
    h("span", { class: "mono" }, agent.vin),
    h("span", { class: "agent-facts" },
      `since ${clock(st.since)} · v${text(st.version)} · button ${text(st.button)} · ` +
      `GPS ${text(st.gps)} · CAN ${text(st.can)}`),
    h("span", { class: st.open_incident ? "agent-open" : "agent-facts" },
      st.open_incident ? `open incident ${shortId(st.open_incident)}` : "no open incident"),
    h("span", { class: st.outbox_pending ? "agent-open" : "agent-facts" },
      `outbox ${st.outbox_pending} pending`),
  );
  const old = document.getElementById(id);
  if (old) old.replaceWith(chip);
  else $("#agents").append(chip);
}

function showInvalid(entry) {
  const box = $("#invalid");
  box.hidden = false;
  box.append(h("p", {}, `Invalid message on ${entry.topic} at ${clock(entry.at)}: `,
    entry.problems.join("; ")));
}

// -- the request cards ------------------------------------------------------------------------

const cardViews = new Map();

function showCard(card) {
  $("#no-cards").hidden = true;
  let view = cardViews.get(card.incident_id);
  if (!view) {
    view = makeCardView(card);
    cardViews.set(card.incident_id, view);
    $("#cards").prepend(view.root);
  }
  view.card = card;
  view.root.dataset.state = card.state;
  view.info.replaceChildren(...cardInfo(card));
  const open = !["closed", "rejected", "cancelled"].includes(card.state);
  for (const button of $$("button", view.actions)) button.disabled = !open;
  view.eta.disabled = !open;
  view.note.disabled = !open;
}

function makeCardView(card) {
  const eta = h("input", {
    type: "number", min: "0", max: "10000", step: "1", value: "30",
    class: "eta", "aria-label": "ETA in minutes",
  });
  const note = h("input", {
    type: "text", maxlength: "1000", class: "note", placeholder: "note to the car (optional)",
    "aria-label": "note to the car",
  });
  const view = { card, eta, note };
  const answer = (status) => () => {
    const message = { type: "ack", incident_id: view.card.incident_id, status };
    if (status === "assigned") {
      const minutes = Number.parseInt(eta.value, 10);
      if (!Number.isInteger(minutes) || minutes < 0) {
        toast("Enter the ETA in minutes");
        eta.focus();
        return;
      }
      message.eta_minutes = minutes;
    }
    if (note.value.trim()) message.message = note.value.trim();
    if (send(message)) note.value = "";
  };
  view.actions = h("div", { class: "actions" },
    h("button", { type: "button", class: "act received", dataset: { action: "received" },
      onclick: answer("received") }, "Received"),
    h("span", { class: "assign" },
      h("button", { type: "button", class: "act assigned", dataset: { action: "assigned" },
        onclick: answer("assigned") }, "Assigned"),
      h("label", { class: "eta-label" }, "ETA ", eta, " min")),
    h("button", { type: "button", class: "act closed", dataset: { action: "closed" },
      onclick: answer("closed") }, "Closed"),
    h("button", { type: "button", class: "act rejected", dataset: { action: "rejected" },
      onclick: answer("rejected") }, "Rejected"),
    note,
  );
  view.info = h("div", { class: "card-info" });
  view.root = h("article", { class: "card", dataset: { incident: card.incident_id } },
    view.info, view.actions);
  return view;
}

function stateBadge(card) {
  let label = STATE_TEXT[card.state] || card.state;
  const last = card.acks[card.acks.length - 1];
  if (card.state === "assigned" && last && last.eta_minutes !== undefined) {
    label += ` · ETA ${last.eta_minutes} min`;
  }
  return h("span", { class: "badge state", dataset: { state: card.state } }, label);
}

function section(title, ...children) {
  return h("section", { class: "facts" }, h("h4", {}, title), ...children);
}

function dl(rows) {
  return h("dl", {}, rows.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function cardInfo(card) {
  const r = card.request || {};
  const contact = r.contact || {};
  const address = contact.address || {};
  const vehicle = r.vehicle || {};
  const problem = r.problem || {};
  const coverage = r.coverage || null;
  const trigger = r.trigger || {};
  const loc = card.location;
  const vs = card.vehicle_state;

  const head = h("header", { class: "card-head" },
    h("div", { class: "title" },
      h("h3", {}, card.request ? category(problem.category) : "Request not seen"),
      stateBadge(card)),
    h("div", { class: "ids" },
      h("span", {}, `created ${clock(r.created_at)}`),
      h("span", { class: "mono", title: card.incident_id }, `incident ${shortId(card.incident_id)}`),
      card.sequences.length ? h("span", {}, `sequence ${Math.max(...card.sequences)}`) : null),
  );

  const description = problem.description
    ? h("p", { class: "description" }, problem.description) : null;

  const who = section("Who",
    h("p", { class: "big contact-name" }, text(contact.name)),
    h("p", {}, text(address.street)),
    h("p", {}, `${address.postal_code || ""} ${address.city || ""}`.trim() || dash,
      address.country ? ` (${address.country})` : ""),
    contact.phone ? h("p", {}, h("a", { href: `tel:${contact.phone.replace(/\s+/g, "")}` }, contact.phone)) : h("p", {}, "no phone"),
    contact.email ? h("p", {}, h("a", { href: `mailto:${contact.email}` }, contact.email)) : h("p", {}, "no e-mail"),
  );

  const car = section("Which car",
    h("p", { class: "plate-row" },
      h("span", { class: "plate" }, text(vehicle.registration_plate)),
      vehicle.registration_country ? h("span", { class: "plate-country" }, vehicle.registration_country) : null),
    h("p", { class: "big" }, [vehicle.model, vehicle.colour].filter(Boolean).join(" · ") || dash),
    h("p", {}, h("span", { class: "mono" }, text(vehicle.vin || card.vin)), " ",
      h("span", { class: "chip" }, vehicle.vin_source === "uds" ? "VIN read over UDS" : vehicle.vin_source === "config" ? "VIN from config" : "VIN source unknown")),
    h("p", {}, `first registered ${text(vehicle.first_registration)}`),
  );

  const cover = section("Coverage",
    coverage
      ? h("p", {}, h("span", { class: "badge verdict", dataset: { verdict: coverage.status } },
        coverage.status === "covered" ? "Covered" : coverage.status === "not_covered" ? "Not covered" : "Unknown"))
      : h("p", {}, dash),
    coverage && coverage.reasons && coverage.reasons.length
      ? h("ul", { class: "reasons" }, coverage.reasons.map((reason) => h("li", {}, reason)))
      : null,
    coverage ? dl([
      ["valid until", text(coverage.valid_until)],
      ["country covered", yesNo(coverage.country_covered)],
      ["within 24 h", yesNo(coverage.reported_within_24h)],
    ]) : null,
  );

  const where = h("section", { class: "where" },
    h("h4", {}, "Where"),
    h("div", { class: "where-body" },
      regionMap(loc, card.trail),
      closeMap(loc, card.trail),
      locationFacts(loc, card)),
  );

  const what = section("What",
    dl([
      ["category", `${category(problem.category)}${trigger.driver_category ? " (chosen by the driver)" : " (from the car's signals)"}`],
      ["trigger", `held ${num(trigger.held_ms / 1000, 2, "s")} via ${text(trigger.source)}`],
    ]),
    problem.evidence && problem.evidence.length
      ? h("ul", { class: "evidence" }, problem.evidence.map((e) => h("li", {}, e)))
      : null,
  );

  const state = section("Vehicle state", vehicleState(vs));

  const times = section("Timings", dl([
    ["created", clock(r.created_at, true)],
    ["delivered", clock(card.delivered, true)],
    ["delay", card.delay_ms === null ? dash : `${num(card.delay_ms, 0)} ms`],
    card.sequences.length > 1 ? ["re-sent", `${card.sequences.length - 1}×`] : null,
    card.duplicates ? ["duplicates", String(card.duplicates)] : null,
    ["updates", card.updates ? `${card.updates}, last ${clock(card.last_update)}` : "none"],
    card.cancelled_at ? ["cancelled", clock(card.cancelled_at, true)] : null,
  ]),
  card.acks.length ? h("ol", { class: "answers" }, card.acks.map((a) =>
    h("li", {}, h("strong", {}, a.status), a.eta_minutes !== undefined ? ` · ETA ${a.eta_minutes} min` : "",
      a.automatic ? " (automatic)" : "", a.message ? ` · “${a.message}”` : "", " ",
      h("time", {}, clock(a.at, true))))) : h("p", { class: "muted" }, "not answered yet"));

  return [
    head,
    description,
    h("div", { class: "grid3" }, who, car, cover),
    where,
    h("div", { class: "grid3" }, what, state, times),
  ];
}

function vehicleState(vs) {
  if (!vs) return h("p", {}, dash);
  const t = vs.tyre_pressure_kpa || {};
  const known = ["fl", "fr", "rl", "rr"].map((k) => t[k]).filter((v) => typeof v === "number");
  const highest = known.length ? Math.max(...known) : 0;
  const tyre = (k) => {
    const v = t[k];
    const low = typeof v === "number" && v < highest * 0.8;
    return h("span", { class: low ? "low" : null }, `${k.toUpperCase()} ${v === null || v === undefined ? dash : v}`);
  };
  return dl([
    ["12 V battery", h("span", { class: vs.battery_12v_v !== null && vs.battery_12v_v < 11.8 ? "low" : null }, num(vs.battery_12v_v, 2, "V"))],
    ["charge", `${num(vs.hv_soc_pct, 1, "%")} · ${num(vs.range_km, 0, "km")}`],
    ["tyres kPa", h("span", { class: "tyre-grid" }, tyre("fl"), tyre("fr"), tyre("rl"), tyre("rr"))],
    ["ignition", `${text(vs.ignition)} · ${num(vs.speed_kmh, 0, "km/h")}`],
    ["airbag", yesNo(vs.airbag_deployed, "DEPLOYED", "not deployed")],
    ["doors · key", `${yesNo(vs.doors_locked, "locked", "unlocked")} · ${yesNo(vs.key_detected, "key found", "NO KEY")}`],
    ["trailer · hazard", `${yesNo(vs.trailer_connected, "trailer", "no trailer")} · ${yesNo(vs.hazard_lights, "hazard on", "hazard off")}`],
    ["odometer", num(vs.odometer_km, 0, "km")],
    ["fault codes", vs.dtcs === null || vs.dtcs === undefined ? "not read" : vs.dtcs.length ? vs.dtcs.join(", ") : "none"],
  ]);
}

function locationFacts(loc, card) {
  if (!loc || loc.lat === null || loc.lat === undefined) {
    return h("div", { class: "loc-facts" }, h("p", { class: "big warn" }, "No position"),
      dl([["fix", text(loc && loc.fix)]]));
  }
  const place = [loc.locality, loc.country].filter(Boolean).join(", ") || "unknown place";
  return h("div", { class: "loc-facts" },
    h("p", { class: "big" }, place),
    h("p", {}, h("span", { class: "badge trust", dataset: { trusted: String(Boolean(loc.trusted)) } },
      loc.trusted ? "trusted fix" : "NOT trusted")),
    dl([
      ["position", h("span", { class: "mono" }, `${loc.lat.toFixed(5)}, ${loc.lon.toFixed(5)}`)],
      ["accuracy", loc.horizontal_accuracy_m === null ? dash : `±${num(loc.horizontal_accuracy_m, 0, "m")} (95 %)`],
      ["heading", loc.heading_deg === null ? dash : `${num(loc.heading_deg, 0)}° ${compass(loc.heading_deg)}`],
      ["speed", num(loc.speed_kmh, 0, "km/h")],
      ["altitude", num(loc.alt_m, 0, "m")],
      ["fix", `${text(loc.fix)} · ${num(loc.fix_age_s, 1, "s")} old`],
      ["trail", `${card.trail.length} position${card.trail.length === 1 ? "" : "s"}`],
    ]));
}

// -- maps: inline SVG, no tiles -----------------------------------------------------------------

function regionBox(lat, lon) {
  // the same box as hw_sim/console/outlines.py region_box()
  const latC = Math.max(-85, Math.min(85, Math.round(lat * 4) / 4));
  const lonC = Math.round(lon * 4) / 4;
  const halfLat = 1.0;
  const halfLon = (halfLat * (MAP_W / MAP_H)) / Math.cos((latC * Math.PI) / 180);
  return [lonC - halfLon, latC - halfLat, lonC + halfLon, latC + halfLat];
}

const outlineCache = new Map();
function outlines(lat, lon) {
  const key = regionBox(lat, lon).map((v) => v.toFixed(4)).join(",");
  if (!outlineCache.has(key)) {
    const url = `/api/outlines?lat=${encodeURIComponent(lat.toFixed(3))}&lon=${encodeURIComponent(lon.toFixed(3))}`;
    outlineCache.set(key, fetch(url, { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : null))
      .catch(() => null));
  }
  return outlineCache.get(key);
}

function mapFrame(cls, label) {
  return s("svg", { class: `map ${cls}`, viewBox: `0 0 ${MAP_W} ${MAP_H}`, role: "img", "aria-label": label },
    s("rect", { class: "map-bg", x: 0, y: 0, width: MAP_W, height: MAP_H }));
}

function figure(caption, svg) {
  return h("figure", { class: "map-fig" }, h("figcaption", {}, caption), svg);
}

function marker(x, y, heading, size = 1) {
  if (heading === null || heading === undefined) {
    return s("circle", { class: "car-marker", cx: x, cy: y, r: 6 * size });
  }
  const k = 9 * size;
  return s("path", {
    class: "car-marker",
    d: `M0 ${-k} L${k * 0.7} ${k} L0 ${k * 0.45} L${-k * 0.7} ${k} Z`,
    transform: `translate(${x.toFixed(1)} ${y.toFixed(1)}) rotate(${heading.toFixed(0)})`,
  });
}

function regionMap(loc, trail) {
  const svg = mapFrame("region", "overview map");
  const caption = "Region · 220 km north to south";
  if (!loc || loc.lat === null || loc.lat === undefined) {
    svg.append(s("text", { class: "map-note", x: MAP_W / 2, y: MAP_H / 2 }, "no position"));
    return figure(caption, svg);
  }
  const [w, so, e, n] = regionBox(loc.lat, loc.lon);
  const px = (lon) => ((lon - w) / (e - w)) * MAP_W;
  const py = (lat) => ((n - lat) / (n - so)) * MAP_H;
  const grid = s("g", { class: "graticule" });
  for (let lat = Math.ceil(so * 2) / 2; lat <= n; lat += 0.5) {
    grid.append(s("line", { x1: 0, x2: MAP_W, y1: py(lat), y2: py(lat) }));
    if (py(lat) > 12 && py(lat) < MAP_H - 14) {
      grid.append(s("text", { x: 3, y: py(lat) - 2 }, `${lat.toFixed(1)}°${lat >= 0 ? "N" : "S"}`));
    }
  }
  for (let lon = Math.ceil(w * 2) / 2; lon <= e; lon += 0.5) {
    grid.append(s("line", { y1: 0, y2: MAP_H, x1: px(lon), x2: px(lon) }));
    if (px(lon) > 40 && px(lon) < MAP_W - 30) {
      grid.append(s("text", { x: px(lon) + 2, y: MAP_H - 3 }, `${lon.toFixed(1)}°${lon >= 0 ? "E" : "W"}`));
    }
  }
  const shapes = s("g", { class: "outlines" });
  svg.append(grid, shapes);
  const points = trail.map((p) => `${px(p.lon).toFixed(1)},${py(p.lat).toFixed(1)}`);
  if (points.length > 1) svg.append(s("polyline", { class: "trail", points: points.join(" ") }));
  svg.append(s("circle", { class: "halo", cx: px(loc.lon), cy: py(loc.lat), r: 14 }));
  svg.append(marker(px(loc.lon), py(loc.lat), loc.heading_deg, 0.9));
  outlines(loc.lat, loc.lon).then((data) => {
    if (!data || !data.source) {
      shapes.append(s("text", { class: "map-note small", x: MAP_W / 2, y: 28 }, "no outline data: coordinate grid only"));
      return;
    }
    shapes.append(s("path", { class: "coast", d: data.coasts }), s("path", { class: "border", d: data.borders }));
    for (const label of data.labels || []) {
      shapes.append(s("text", { class: "country", x: label.x, y: label.y }, label.country));
    }
  });
  return figure(caption, svg);
}

function niceStep(metres) {
  const p = 10 ** Math.floor(Math.log10(metres));
  for (const m of [1, 2, 5, 10]) if (m * p >= metres) return m * p;
  return 10 * p;
}

function closeMap(loc, trail) {
  const svg = mapFrame("close", "close-up map");
  const caption = "Close-up · north up · trail and 95 % accuracy";
  if (!loc || loc.lat === null || loc.lat === undefined) {
    svg.append(s("text", { class: "map-note", x: MAP_W / 2, y: MAP_H / 2 }, "no position"));
    return figure(caption, svg);
  }
  const kx = 111320 * Math.cos((loc.lat * Math.PI) / 180);
  const ky = 110540;
  const east = (p) => (p.lon - loc.lon) * kx;
  const north = (p) => (p.lat - loc.lat) * ky;
  const accuracy = loc.horizontal_accuracy_m || 0;
  let reach = Math.max(100, accuracy * 1.3);
  for (const p of trail) reach = Math.max(reach, Math.hypot(east(p), north(p)) * 1.1);
  reach = Math.min(reach, 50000);
  const scale = (MAP_H / 2 - 14) / reach; // px per metre
  const cx = MAP_W / 2;
  const cy = MAP_H / 2;
  const step = niceStep(reach / 2);
  const grid = s("g", { class: "graticule" });
  for (let m = -Math.ceil(MAP_W / 2 / scale / step) * step; m * scale <= MAP_W / 2; m += step) {
    grid.append(s("line", { x1: cx + m * scale, x2: cx + m * scale, y1: 0, y2: MAP_H }));
  }
  for (let m = -Math.ceil(MAP_H / 2 / scale / step) * step; m * scale <= MAP_H / 2; m += step) {
    grid.append(s("line", { y1: cy + m * scale, y2: cy + m * scale, x1: 0, x2: MAP_W }));
  }
  svg.append(grid);
  svg.append(s("circle", {
    class: "accuracy", dataset: { trusted: String(Boolean(loc.trusted)) },
    cx, cy, r: Math.max(2, accuracy * scale),
  }));
  const points = trail.map((p) => [cx + east(p) * scale, cy - north(p) * scale]);
  if (points.length > 1) {
    svg.append(s("polyline", { class: "trail", points: points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ") }));
  }
  points.slice(0, -1).forEach(([x, y], i) => {
    svg.append(s("circle", { class: "trail-point", cx: x, cy: y, r: 3, opacity: 0.35 + (0.5 * i) / points.length }));
  });
  svg.append(marker(cx, cy, loc.heading_deg, 1.2));
  const bar = step * scale;
  svg.append(s("g", { class: "scale" },
    s("line", { x1: 10, x2: 10 + bar, y1: MAP_H - 12, y2: MAP_H - 12 }),
    s("text", { x: 10, y: MAP_H - 17 }, step >= 1000 ? `${step / 1000} km` : `${step} m`)));
  svg.append(s("text", { class: "map-trust", dataset: { trusted: String(Boolean(loc.trusted)) }, x: MAP_W - 4, y: MAP_H - 8 },
    `±${Math.round(accuracy)} m · ${loc.trusted ? "trusted" : "NOT trusted"}`));
  return figure(caption, svg);
}

// -- start ------------------------------------------------------------------------------------

setupButton();
setupControls();
connect();
