// The operator dashboard: plain JavaScript over the JSON API. Every value from the
// API is put on the page as text (textContent, never HTML), so a product id or any
// other field cannot inject markup or script.
"use strict";

const REFRESH_MS = 5000;
const HISTORY_DAYS = 180;
// The product page asks for this many days of demand up to the product's last day
// (the demand endpoint refuses a longer history than HTTP_MAX_HISTORY_DAYS at once).
const DEMAND_WINDOW_DAYS = 365;
// The API's default HTTP_MAX_HISTORY_DAYS: the window never grows past it.
const MAX_DEMAND_DAYS = 3660;
const LISTING_PAGE = 500;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function number(value, digits = 2) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function day(value) {
  return value ? String(value).slice(0, 10) : "–";
}

function modelName(name) {
  if (!name) return "–";
  return name.replace("combination:", "").replaceAll("gbm", "global").replaceAll("+", " + ");
}

// "18% better" / "5% worse" than the 28-day moving average, on 28-day totals.
function skill(value, backtests) {
  if (value === null || value === undefined) return "–";
  const percent = Math.round(Math.abs(value) * 100);
  const word = value >= 0 ? "better" : "worse";
  const over = backtests > 1 ? ` (${backtests} backtests)` : backtests === 1 ? " (1 backtest)" : "";
  return `${percent}% ${word}${over}`;
}

function badge(level) {
  return el("span", level || "not assessed", "badge " + (level || "none"));
}

// "order 240 by 2026-11-20", "none needed", or "–" before the first assessment.
function orderText(units, byDate) {
  if (units === null || units === undefined) return "–";
  if (units <= 0) return "none needed";
  return `order ${number(units, 0)} by ${day(byDate)}`;
}

function addDays(isoDay, days) {
  const moment = new Date(isoDay + "T00:00:00Z");
  moment.setUTCDate(moment.getUTCDate() + days);
  return moment.toISOString().slice(0, 10);
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { accept: "application/json" } });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail;
    } catch (ignored) {}
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

function orNull(promise) {
  return promise.catch((error) => {
    if (error.status === 404) return null;
    throw error;
  });
}

// ---- the overview: products by risk ------------------------------------------

function overview() {
  const state = { offset: 0, limit: 50, total: 0 };
  const level = document.getElementById("level");
  const sort = document.getElementById("sort");
  const search = document.getElementById("search");
  const status = document.getElementById("status");
  const body = document.querySelector("#products tbody");
  const pageLabel = document.getElementById("page");
  const previous = document.getElementById("previous");
  const next = document.getElementById("next");
  const params = new URLSearchParams(location.search);
  level.value = params.get("risk_level") || "";
  sort.value = params.get("sort") === "order_by_date" ? "order_by_date" : "risk";
  search.value = params.get("search") || "";

  function query() {
    const values = new URLSearchParams({ sort: sort.value, limit: state.limit, offset: state.offset });
    if (level.value) values.append("risk_level", level.value);
    if (search.value.trim()) values.set("search", search.value.trim());
    return values;
  }

  function remember() {
    const shown = new URLSearchParams();
    if (level.value) shown.set("risk_level", level.value);
    if (sort.value !== "risk") shown.set("sort", sort.value);
    if (search.value.trim()) shown.set("search", search.value.trim());
    history.replaceState(null, "", shown.toString() ? "?" + shown : location.pathname);
  }

  function cell(value, className) {
    return el("td", value, className);
  }

  function row(item) {
    const tr = el("tr");
    tr.dataset.product = item.product_id;
    tr.dataset.level = item.risk_level || "none";
    tr.dataset.order = item.recommended_order_units ?? "";
    const link = el("a", item.product_id);
    link.href = "/dashboard/product?id=" + encodeURIComponent(item.product_id);
    const name = el("td");
    name.append(link);
    const risk = el("td");
    risk.append(badge(item.risk_level));
    tr.append(
      name,
      risk,
      cell(number(item.stockout_probability), "number"),
      cell(day(item.predicted_stockout_date)),
      cell(item.days_until_stockout ?? "–", "number"),
      cell(orderText(item.recommended_order_units, item.order_by_date), "order"),
      cell(number(item.lost_sales_units_28d, 0), "number lost"),
      cell(number(item.current_stock_units, 0), "number"),
      cell(item.stock_as_of ? item.stock_as_of.slice(0, 16).replace("T", " ") : "–"),
      cell(item.lead_time_days ?? "–", "number"),
      cell(item.trained_at ? item.trained_at.slice(0, 16).replace("T", " ") : "–"),
      cell(modelName(item.model_name)),
      cell(skill(item.skill_vs_moving_average, item.skill_backtests), "number"),
      cell(number(item.wape), "number"),
    );
    return tr;
  }

  async function refresh() {
    try {
      const page = await getJSON("/products?" + query());
      state.total = page.total;
      body.replaceChildren(...page.items.map(row));
      const last = Math.min(state.offset + page.items.length, page.total);
      pageLabel.textContent = page.total ? `${state.offset + 1}–${last} of ${page.total}` : "none";
      previous.disabled = state.offset === 0;
      next.disabled = last >= page.total;
      status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      status.textContent = "could not load the products: " + error.message;
    }
  }

  let typing;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.offset = 0; remember(); refresh(); }, 250);
  });
  level.addEventListener("change", () => { state.offset = 0; remember(); refresh(); });
  sort.addEventListener("change", () => { state.offset = 0; remember(); refresh(); });
  previous.addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); refresh(); });
  next.addEventListener("click", () => { state.offset += state.limit; refresh(); });
  refresh();
  setInterval(refresh, REFRESH_MS);
}

// ---- one product: demand, forecast, projected stock ---------------------------

function card(label, value, node) {
  const box = el("div", null, "card");
  box.append(el("div", label, "label"));
  const shown = el("div", node ? null : value, "value");
  if (node) shown.append(node);
  box.append(shown);
  return box;
}

function plot(id, traces, title, unit, extra = {}) {
  Plotly.newPlot(
    id,
    traces,
    {
      title: { text: title },
      margin: { t: 40, r: 20, b: 40, l: 50 },
      legend: { orientation: "h", y: -0.15 },
      yaxis: { title: { text: unit }, rangemode: "tozero" },
      ...extra,
    },
    { displaylogo: false, responsive: true },
  );
}

// A quantile of the values, for an axis that one wholesale order does not flatten.
function quantile(values, q) {
  const sorted = values.filter((v) => v > 0).sort((a, b) => a - b);
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function demandChart(demand, forecast) {
  const days = demand.days.slice(-HISTORY_DAYS);
  const quantities = days.map((d) => d.quantity_units);
  const empty = days.filter((d) => d.censored);
  const traces = [
    {
      name: "sales",
      type: "bar",
      x: days.map((d) => d.date),
      y: quantities,
      marker: { color: "#90a4ae" },
    },
  ];
  const extraShapes = [];
  if (empty.length) {
    // Days the shelf was empty: shaded, with the demand the service estimates for them
    // stacked on what was sold (the unmet part).
    traces.push({
      name: "estimated unmet demand (shelf empty)",
      type: "bar",
      x: empty.map((d) => d.date),
      y: empty.map((d) => Math.max(d.estimated_demand_units - d.quantity_units, 0)),
      base: empty.map((d) => d.quantity_units),
      marker: { color: "rgba(229,57,53,0.55)" },
    });
    for (const d of empty) {
      // A bar stands on its day's midnight: the shade spans the half-days around it.
      const noon = Date.parse(d.date + "T12:00:00Z");
      extraShapes.push({ type: "rect", xref: "x", yref: "paper",
        x0: new Date(noon - 86400000).toISOString(), x1: new Date(noon).toISOString(),
        y0: 0, y1: 1, fillcolor: "rgba(229,57,53,0.10)", line: { width: 0 }, layer: "below" });
    }
  }
  let top = quantile(quantities, 0.95) * 1.6;
  if (forecast) {
    const x = forecast.days.map((d) => d.date);
    const name = modelName(forecast.model_name);
    traces.push(
      { name: "interval (upper)", x, y: forecast.days.map((d) => d.yhat_upper), mode: "lines",
        line: { width: 0 }, showlegend: false, hoverinfo: "skip" },
      { name: "daily interval", x, y: forecast.days.map((d) => d.yhat_lower),
        mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: "rgba(30,136,229,0.15)" },
      { name: `forecast (${name})`, x, y: forecast.days.map((d) => d.yhat), mode: "lines",
        line: { color: "#1e88e5" } },
    );
    top = Math.max(top, ...forecast.days.map((d) => d.yhat * 1.5));
  }
  const above = quantities.filter((q) => q > top).length;
  const extra = top > 0 ? { yaxis: { title: { text: "units" }, range: [0, top] } } : {};
  if (extraShapes.length) {
    extra.shapes = extraShapes;
    extra.barmode = "overlay";
  }
  if (above) {
    extra.annotations = [{ xref: "paper", yref: "paper", x: 1, y: 1, xanchor: "right",
      showarrow: false, text: `${above} day(s) above the axis (hover for their units)` }];
  }
  plot("demand-chart", traces, "Daily demand and forecast", "units", extra);
}

function stockChart(demand, forecast, risk) {
  // Stock at the end of the snapshot's day, less the demand since: observed until the
  // forecast starts, then the 10/50/90% quantiles of the forecast's cumulative demand
  // (the fan: 10% of outcomes leave less stock than the lower edge).
  const stockDay = risk.as_of.slice(0, 10);
  const observed = demand.days
    .filter((d) => d.date > stockDay && d.date < forecast.forecast_start)
    .reduce((total, d) => total + d.quantity_units, 0);
  const before = forecast.days.filter((d) => d.date <= stockDay);
  const base = before.length ? before[before.length - 1] : null;
  const start = risk.current_stock_units - observed;
  const windowEnd = addDays(stockDay, risk.risk_window_days);
  // Until even the slowest 10% of outcomes have used the stock up (and the lead time
  // has passed), a week more: not the whole horizon after the stock is gone.
  const ahead = [];
  for (const d of forecast.days.filter((day) => day.date > stockDay)) {
    ahead.push(d);
    const demandSince = d.cumulative_p10 - (base ? base.cumulative_p10 : 0);
    if (demandSince >= start && d.date >= windowEnd) {
      ahead.push(...forecast.days.filter((day) => day.date > d.date).slice(0, 7));
      break;
    }
  }
  const x = [stockDay, ...ahead.map((d) => d.date)];
  const line = (key) => [
    start,
    ...ahead.map((d) => Math.max(start - d[key] + (base ? base[key] : 0), 0)),
  ];
  const shapes = [
    { type: "rect", xref: "x", yref: "paper", x0: stockDay, x1: windowEnd, y0: 0, y1: 1,
      fillcolor: "rgba(239,108,0,0.12)", line: { width: 0 } },
  ];
  const annotations = [
    { x: windowEnd, yref: "paper", y: 1, text: `lead time ${risk.risk_window_days} d`,
      showarrow: false, xanchor: "right", yanchor: "top" },
  ];
  const traces = [
    { name: "90% of outcomes above", x, y: line("cumulative_p90"), mode: "lines",
      line: { width: 0 }, showlegend: false, hoverinfo: "skip" },
    { name: "10–90% of outcomes", x, y: line("cumulative_p10"), mode: "lines", line: { width: 0 },
      fill: "tonexty", fillcolor: "rgba(38,50,56,0.15)" },
    { name: "projected stock (median)", x, y: line("cumulative_p50"), mode: "lines+markers",
      line: { color: "#263238" }, marker: { size: 4 } },
  ];
  if (risk.order_up_to_units !== null && risk.order_up_to_units !== undefined) {
    // The levels the policy orders against: up to this after an order, and an order
    // is due once the projected stock falls to the reorder point.
    for (const [value, label, dash] of [
      [risk.order_up_to_units, `order-up-to ${number(risk.order_up_to_units, 0)}`, "dot"],
      [risk.reorder_point_units, `reorder point ${number(risk.reorder_point_units, 0)}`, "dashdot"],
    ]) {
      shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: value, y1: value,
        line: { color: "#1565c0", dash, width: 1.5 } });
      annotations.push({ xref: "paper", x: 1, y: value, text: label, showarrow: false,
        xanchor: "right", yanchor: "bottom", font: { color: "#1565c0" } });
    }
  }
  if (risk.predicted_stockout_date) {
    shapes.push({ type: "line", xref: "x", yref: "paper", x0: risk.predicted_stockout_date,
      x1: risk.predicted_stockout_date, y0: 0, y1: 1, line: { color: "#c62828", dash: "dash" } });
    traces.push({ name: "predicted stockout", x: [risk.predicted_stockout_date], y: [0],
      mode: "markers", marker: { color: "#c62828", size: 12, symbol: "x" } });
  }
  plot("stock-chart", traces, "Projected stock from the latest stock level", "units on hand", {
    shapes,
    annotations,
  });
}

function metricsTable(forecast) {
  const body = document.querySelector("#metrics tbody");
  const rows = [
    ["model", modelName(forecast.model_name)],
    ["weights", forecast.weights ? Object.entries(forecast.weights)
      .map(([member, weight]) => `${modelName(member)} ${number(weight)}`).join(", ") : "–"],
    ["against the 28-day moving average",
      skill(forecast.metrics.skill_vs_moving_average, forecast.metrics.skill_backtests)],
    ["trained", forecast.trained_at.slice(0, 19).replace("T", " ")],
    ["trained on", `${forecast.training_days} days, through ${forecast.trained_through}`],
    ["holdout days", forecast.metrics.holdout_days],
    ["MAPE % (non-zero days)", number(forecast.metrics.mape, 1)],
    ["RMSE", number(forecast.metrics.rmse)],
    ["MAE", number(forecast.metrics.mae)],
    ["WAPE", number(forecast.metrics.wape)],
    ["MASE", number(forecast.metrics.mase)],
    ["weekly / yearly seasonality", `${forecast.seasonality.weekly} / ${forecast.seasonality.yearly}`],
  ];
  body.replaceChildren(...rows.map(([label, value]) => {
    const tr = el("tr");
    tr.append(el("th", label), el("td", value ?? "–", "number"));
    return tr;
  }));
}

// The product's row of the listing (its first and last day with data), or null: the
// search matches within ids, so the exact id is looked for page by page.
async function listedProduct(id) {
  for (let offset = 0; ; offset += LISTING_PAGE) {
    const query = new URLSearchParams({ search: id, sort: "product_id", limit: LISTING_PAGE, offset });
    const page = await getJSON("/products?" + query);
    const item = page.items.find((candidate) => candidate.product_id === id);
    if (item) return item;
    if (!page.items.length || offset + page.items.length >= page.total) return null;
  }
}

// The demand to ask for: DEMAND_WINDOW_DAYS up to the last day with data, and from the
// day after the stock level when that is earlier (the projection takes off the demand
// since), never more than MAX_DEMAND_DAYS. Without a known span, all of it.
function demandQuery(item, risk) {
  if (!item || !item.first_day || !item.last_day) return "";
  let from = addDays(item.last_day, 1 - DEMAND_WINDOW_DAYS);
  if (risk) {
    const afterStock = addDays(risk.as_of.slice(0, 10), 1);
    const earliest = addDays(item.last_day, 1 - MAX_DEMAND_DAYS);
    if (afterStock < from) from = afterStock < earliest ? earliest : afterStock;
  }
  if (from < item.first_day) from = item.first_day;
  return "?" + new URLSearchParams({ from, to: item.last_day });
}

async function productPage() {
  const id = new URLSearchParams(location.search).get("id");
  const error = document.getElementById("error");
  if (!id) {
    error.textContent = "No product given (?id=…).";
    return;
  }
  document.title = "ml-analytics: " + id;
  document.getElementById("title").textContent = id;
  const path = "/products/" + encodeURIComponent(id);
  try {
    const [item, forecast, risk] = await Promise.all([
      listedProduct(id),
      orNull(getJSON(path + "/forecast")),
      orNull(getJSON(path + "/stockout-risk")),
    ]);
    const demand = await getJSON(path + "/demand" + demandQuery(item, risk));
    const cards = document.getElementById("cards");
    cards.append(
      card("risk", null, badge(risk && risk.risk_level)),
      card("stockout probability", risk ? number(risk.stockout_probability) : "–"),
      card("predicted stockout", risk ? day(risk.predicted_stockout_date) : "–"),
      card("days until", risk ? risk.days_until_stockout ?? "–" : "–"),
      card("stock", risk ? `${number(risk.current_stock_units, 0)} (${day(risk.as_of)})` : "–"),
      card("lead time", risk ? `${risk.risk_window_days} d` : "–"),
      card("confidence", risk ? number(risk.confidence) : "–"),
      card("lost sales (28 d)", risk ? number(risk.lost_sales_units_28d, 0) : "–"),
      card(
        `to order (${risk && risk.target_service_level ? Math.round(risk.target_service_level * 100) + "% service" : "service level"})`,
        risk ? orderText(risk.recommended_order_units, risk.order_by_date) : "–",
      ),
    );
    demandChart(demand, forecast);
    if (forecast && risk) {
      stockChart(demand, forecast, risk);
    } else {
      document.getElementById("stock-chart").append(
        el("p", "No projection yet: it needs a trained model and a stock level.", "muted"),
      );
    }
    if (forecast) metricsTable(forecast);
  } catch (failure) {
    error.textContent = "Could not load this product: " + failure.message;
  }
}

// Each page names its entry point (no inline script, so the CSP can forbid them).
document.addEventListener("DOMContentLoaded", () => {
  const pages = { overview, productPage };
  const start = pages[document.body.dataset.page];
  if (start) start();
});
