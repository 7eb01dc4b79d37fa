// Pieces every view uses: loading, error and empty states, and pictures.
import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, picture } from "./api";

/** Thumbnails come at one width, so the service's thumbnail cache serves them all. */
export const THUMBNAIL_WIDTH = 320;

/** What went wrong, said plainly, with a way to try again. */
export function Problem({ error, retry }: { error: unknown; retry?: () => void }) {
  let title = "Something went wrong";
  let detail = error instanceof Error ? error.message : String(error);
  if (error instanceof ApiError) {
    if (error.unreachable) {
      title = "The query service cannot be reached";
      detail = "It may be down or restarting, or the network is cut. Nothing is lost: try again in a moment.";
    } else if (error.status === 503) {
      title = "The event store is unavailable";
    } else if (error.status === 403) {
      title = "Not allowed";
    } else if (error.status === 400) {
      title = error.parameter ? `Check the ${error.parameter} filter` : "Check the filters";
    } else if (error.status === 404) {
      title = "Not found";
    }
  }
  return (
    <div class="problem" role="alert">
      <strong>{title}</strong>
      <p>{detail}</p>
      {retry && (
        <button type="button" onClick={retry}>
          Try again
        </button>
      )}
    </div>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return (
    <p class="empty" role="status">
      {children}
    </p>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <p class="loading" role="status" aria-live="polite">
      Loading {what}…
    </p>
  );
}

/**
 * State of one request: its value, its error, and a way to run it again. The value and the
 * error belong to `deps`: when they change, the old ones are not shown while the new ones
 * load. A retry or a refresh of the same `deps` keeps them shown until the answer comes.
 * With `refreshMs`, the request runs again that long after each answer, while the tab is
 * visible (never two at once).
 */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[], refreshMs?: number) {
  const key = JSON.stringify(deps);
  const [state, setState] = useState<{ key?: string; value?: T; error?: unknown; loading: boolean }>({
    loading: true,
  });
  const [attempt, setAttempt] = useState(0);
  useEffect(() => {
    let live = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    setState((s) => (s.key === key ? { ...s, loading: true } : { key, loading: true }));
    load()
      .then(
        (value) => live && setState({ key, value, loading: false }),
        (error) => live && setState((s) => ({ key, value: s.key === key ? s.value : undefined, error, loading: false })),
      )
      .finally(() => {
        if (!live || !refreshMs) return;
        const again = () => (document.hidden ? (timer = setTimeout(again, refreshMs)) : setAttempt((n) => n + 1));
        timer = setTimeout(again, refreshMs);
      });
    return () => {
      live = false;
      clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key, attempt]);
  const current = state.key === key;
  return {
    value: current ? state.value : undefined,
    error: current ? state.error : undefined,
    loading: state.loading || !current,
    retry: () => setAttempt((n) => n + 1),
  };
}

/**
 * A picture from the API, fetched with the token once it scrolls near the screen (`lazy`),
 * with a placeholder before and when the cloud has none.
 */
export function Picture({
  path,
  alt,
  lazy = true,
  class: className,
  onLoad,
  empty = "No picture in the cloud",
}: {
  path: string | undefined;
  alt: string;
  lazy?: boolean;
  class?: string;
  onLoad?: (img: HTMLImageElement) => void;
  /** What the placeholder says when there is no picture. */
  empty?: string;
}) {
  const holder = useRef<HTMLDivElement>(null);
  const [visible, setVisible] = useState(!lazy);
  const [state, setState] = useState<{ url?: string | null; failed?: boolean }>({});
  useEffect(() => {
    if (visible || !holder.current) return;
    const observer = new IntersectionObserver(
      (entries) => {
        if (entries.some((e) => e.isIntersecting)) {
          setVisible(true);
          observer.disconnect();
        }
      },
      { rootMargin: "300px" },
    );
    observer.observe(holder.current);
    return () => observer.disconnect();
  }, [visible]);
  useEffect(() => {
    if (!visible || !path) return;
    let live = true;
    setState({});
    picture(path).then(
      (url) => live && setState({ url }),
      () => live && setState({ failed: true }),
    );
    return () => {
      live = false;
    };
  }, [visible, path]);
  const placeholder = !path ? empty : state.failed ? "Picture unavailable" : state.url === null ? empty : "";
  return (
    <div ref={holder} class={`picture ${className ?? ""}`}>
      {state.url ? (
        <img src={state.url} alt={alt} onLoad={(e) => onLoad?.(e.currentTarget)} />
      ) : (
        <span class="placeholder" role="img" aria-label={placeholder || `${alt} (loading)`}>
          {placeholder}
        </span>
      )}
    </div>
  );
}
