// Renders the sales table. The data URL comes from a <link> in the page, so it follows the
// page wherever it is served (Shoal rewrites the link under /apps/<app>/).
(async function () {
  const status = document.getElementById("status");
  try {
    const response = await fetch(document.getElementById("data-url").href);
    const data = await response.json();
    const body = document.querySelector("#sales tbody");
    for (const row of data.sales) {
      const tr = document.createElement("tr");
      tr.innerHTML = `<td>${row.region}</td><td>${row.amount}</td>`;
      body.appendChild(tr);
    }
    const logo = document.getElementById("logo");
    await (logo.complete ? Promise.resolve() : new Promise((ok) => logo.addEventListener("load", ok)));
    const checks = [
      `rows:${data.sales.length}`,
      `logo:${logo.naturalWidth > 0 ? "ok" : "missing"}`,
      `css:${getComputedStyle(status).color === "rgb(0, 128, 96)" ? "ok" : "missing"}`,
    ];
    status.textContent = `ready ${checks.join(" ")}`;
  } catch (error) {
    status.textContent = `failed: ${error}`;
  }
})();
