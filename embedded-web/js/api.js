// The HTTPS JSON API (docs/PROTOCOL.md §4). The session travels in the
// HttpOnly cookie; this module never sees it.

/** An error the API answered, with its stable code. */
export class ApiError extends Error {
  /** @param {number} status @param {string} code @param {string} message @param {number|undefined} retryAfterMs */
  constructor(status, code, message, retryAfterMs) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * @param {string} method @param {string} path @param {any} [body]
 * @returns {Promise<any>}
 */
export async function call(method, path, body) {
  let response;
  let textBody;
  try {
    response = await fetch(path, {
      method,
      credentials: 'same-origin',
      headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    // Inside: a connection that breaks during the answer is "offline" too.
    textBody = await response.text();
  } catch {
    throw new ApiError(0, 'offline', 'The server cannot be reached. Check the connection and try again.', undefined);
  }
  let json = null;
  try {
    json = textBody ? JSON.parse(textBody) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    throw new ApiError(
      response.status,
      json?.error ?? 'http_error',
      json?.message ?? `The server answered ${response.status}.`,
      json?.retry_after_ms,
    );
  }
  return json;
}

export const get = (path) => call('GET', path);
export const post = (path, body) => call('POST', path, body ?? {});
