// The admin API with the token of this tab (sessionStorage only: never a URL, never a cookie).

const KEY = "janus-admin-token";

export class ApiError extends Error {
  constructor(status, detail, method = "GET") {
    super(detail);
    this.status = status;
    this.method = method;
  }
  /** The token cannot read: log out. (A read-only token refused a change is not that.) */
  get refused() {
    return this.status === 401 || (this.status === 403 && this.method === "GET");
  }
}

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

async function detail(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail ?? body);
  } catch {
    return response.statusText || `HTTP ${response.status}`;
  }
}

/** One admin request; the JSON answer, or an ApiError with the API's own message. */
export async function admin(path, { method = "GET", body, bearer = token.get() } = {}) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${bearer}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`/admin${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    throw new ApiError(0, `the service did not answer (${err.message})`);
  }
  if (!response.ok) throw new ApiError(response.status, await detail(response), method);
  return response.json();
}

/** The service's Prometheus text (public, like any scraper reads it). */
export async function metricsText() {
  const response = await fetch("/metrics", { cache: "no-store", credentials: "omit" });
  if (!response.ok) throw new ApiError(response.status, `/metrics answered ${response.status}`);
  return response.text();
}
