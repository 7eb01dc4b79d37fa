// Where the console is, kept in the URL's fragment (`#/events?label=person`), so a view with
// its filters can be bookmarked and shared, and the server has one page to serve.
import { useEffect, useState } from "preact/hooks";

export interface Route {
  /** The path after `#`, like `/events` or `/events/<id>`. */
  path: string;
  params: URLSearchParams;
}

export function parseRoute(hash: string): Route {
  const raw = hash.replace(/^#/, "") || "/events";
  const question = raw.indexOf("?");
  const path = question < 0 ? raw : raw.slice(0, question);
  const params = new URLSearchParams(question < 0 ? "" : raw.slice(question + 1));
  return { path: path === "/" ? "/events" : path, params };
}

/** The fragment for `path` with `params`, leaving out empty values. */
export function href(path: string, params: Record<string, string | undefined> = {}): string {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value) query.set(key, value);
  const text = query.toString();
  return `#${path}${text ? "?" + text : ""}`;
}

export function navigate(path: string, params: Record<string, string | undefined> = {}): void {
  location.hash = href(path, params);
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const changed = () => setRoute(parseRoute(location.hash));
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}
