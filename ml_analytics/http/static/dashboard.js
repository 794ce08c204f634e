// The operator dashboard: plain JavaScript over the JSON API. Every value from the
// API is put on the page as text (textContent, never HTML), so a product id or any
// other field cannot inject markup or script.
"use strict";

const REFRESH_MS = 5000;
const HISTORY_DAYS = 180;

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

function badge(level) {
  return el("span", level || "not assessed", "badge " + (level || "none"));
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
  const search = document.getElementById("search");
  const status = document.getElementById("status");
  const body = document.querySelector("#products tbody");
  const pageLabel = document.getElementById("page");
  const previous = document.getElementById("previous");
  const next = document.getElementById("next");
  const params = new URLSearchParams(location.search);
  level.value = params.get("risk_level") || "";
  search.value = params.get("search") || "";

  function query() {
    const values = new URLSearchParams({ sort: "risk", limit: state.limit, offset: state.offset });
    if (level.value) values.append("risk_level", level.value);
    if (search.value.trim()) values.set("search", search.value.trim());
    return values;
  }

  function remember() {
    const shown = new URLSearchParams();
    if (level.value) shown.set("risk_level", level.value);
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
      cell(number(item.current_stock_units, 0), "number"),
      cell(item.stock_as_of ? item.stock_as_of.slice(0, 16).replace("T", " ") : "–"),
      cell(item.lead_time_days ?? "–", "number"),
      cell(item.trained_at ? item.trained_at.slice(0, 16).replace("T", " ") : "–"),
      cell(number(item.mape, 1), "number"),
      cell(number(item.wape), "number"),
      cell(number(item.mase), "number"),
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

function demandChart(demand, forecast) {
  const days = demand.days.slice(-HISTORY_DAYS);
  const traces = [
    {
      name: "demand",
      type: "bar",
      x: days.map((d) => d.date),
      y: days.map((d) => d.quantity_units),
      marker: { color: "#90a4ae" },
    },
  ];
  if (forecast) {
    const x = forecast.days.map((d) => d.date);
    traces.push(
      { name: "interval (upper)", x, y: forecast.days.map((d) => d.yhat_upper), mode: "lines",
        line: { width: 0 }, showlegend: false, hoverinfo: "skip" },
      { name: `${Math.round(100 * 0.95)}% interval`, x, y: forecast.days.map((d) => d.yhat_lower),
        mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: "rgba(30,136,229,0.15)" },
      { name: "forecast (Prophet)", x, y: forecast.days.map((d) => d.yhat), mode: "lines",
        line: { color: "#1e88e5" } },
      { name: "expected (risk model)", x, y: forecast.days.map((d) => d.expected), mode: "lines",
        line: { color: "#6a1b9a", dash: "dot" } },
    );
  }
  plot("demand-chart", traces, "Daily demand and forecast", "units");
}

function stockChart(demand, forecast, risk) {
  // Stock at the end of the snapshot's day, less the demand since (observed, then
  // expected), to the predicted stockout date or the end of the forecast.
  const stockDay = risk.as_of.slice(0, 10);
  const observed = new Map(demand.days.map((d) => [d.date, d.quantity_units]));
  const expected = new Map(forecast.days.map((d) => [d.date, d.expected]));
  const last = forecast.days[forecast.days.length - 1].date;
  const x = [stockDay];
  const y = [risk.current_stock_units];
  let stock = risk.current_stock_units;
  for (let current = addDays(stockDay, 1); current <= last && stock > 0; current = addDays(current, 1)) {
    stock -= expected.has(current) ? expected.get(current) : observed.get(current) || 0;
    x.push(current);
    y.push(Math.max(stock, 0));
  }
  const windowEnd = addDays(stockDay, risk.risk_window_days);
  const shapes = [
    { type: "rect", xref: "x", yref: "paper", x0: stockDay, x1: windowEnd, y0: 0, y1: 1,
      fillcolor: "rgba(239,108,0,0.12)", line: { width: 0 } },
  ];
  const annotations = [
    { x: windowEnd, yref: "paper", y: 1, text: `lead time ${risk.risk_window_days} d`,
      showarrow: false, xanchor: "right", yanchor: "top" },
  ];
  const traces = [
    { name: "projected stock", x, y, mode: "lines+markers", line: { color: "#263238" },
      marker: { size: 4 } },
  ];
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
    ["model", forecast.model_name],
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
    const [demand, forecast, risk] = await Promise.all([
      getJSON(path + "/demand"),
      orNull(getJSON(path + "/forecast")),
      orNull(getJSON(path + "/stockout-risk")),
    ]);
    const cards = document.getElementById("cards");
    cards.append(
      card("risk", null, badge(risk && risk.risk_level)),
      card("stockout probability", risk ? number(risk.stockout_probability) : "–"),
      card("predicted stockout", risk ? day(risk.predicted_stockout_date) : "–"),
      card("days until", risk ? risk.days_until_stockout ?? "–" : "–"),
      card("stock", risk ? `${number(risk.current_stock_units, 0)} (${day(risk.as_of)})` : "–"),
      card("lead time", risk ? `${risk.risk_window_days} d` : "–"),
      card("confidence", risk ? number(risk.confidence) : "–"),
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
