// The console: a shell with three views (events, the fleet, activity), on the public API.
// With authentication on, the first 401 brings up the token prompt; the token is checked
// against the service before it is kept for the tab.
import { render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, checkToken, onUnauthorized, token } from "./api";
import { ActivityView } from "./views/activity";
import { EventView } from "./views/event";
import { EventsView } from "./views/events";
import { FleetView } from "./views/fleet";
import { href, useRoute } from "./route";
import "./style.css";

const VIEWS = [
  ["/events", "Events"],
  ["/fleet", "Edges"],
  ["/activity", "Activity"],
] as const;

function App() {
  const route = useRoute();
  const [signIn, setSignIn] = useState(false);
  // Bumped when a token is accepted: the views load again with it.
  const [session, setSession] = useState(0);
  useEffect(() => onUnauthorized(() => setSignIn(true)), []);
  const section = VIEWS.find(([path]) => route.path === path || route.path.startsWith(path + "/"))?.[0];
  useEffect(() => {
    const name = VIEWS.find(([path]) => path === section)?.[1] ?? "Not found";
    document.title = `${name} · Sightline`;
  }, [section]);
  // A new view takes the focus (the link that had it is gone), so keyboard and screen
  // reader users start on it; not on the first load, where the page starts at the top.
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    document.getElementById("main")?.focus({ preventScroll: true });
  }, [route.path]);

  let view;
  if (signIn) {
    view = (
      <TokenPrompt
        onAccepted={() => {
          setSignIn(false);
          setSession((n) => n + 1);
        }}
      />
    );
  } else if (route.path === "/events") {
    view = <EventsView params={route.params} />;
  } else if (route.path.startsWith("/events/") && decoded(route.path.slice("/events/".length))) {
    view = <EventView id={decoded(route.path.slice("/events/".length))!} />;
  } else if (route.path === "/fleet") {
    view = <FleetView params={route.params} />;
  } else if (route.path === "/activity") {
    view = <ActivityView params={route.params} />;
  } else {
    view = (
      <section>
        <h1>Not found</h1>
        <p>
          There is no page here. <a href={href("/events")}>Go to the events.</a>
        </p>
      </section>
    );
  }
  return (
    <>
      {/* Not href="#main": the fragment holds the view, and the skip link must not change it. */}
      <a
        class="skip"
        href={location.hash || "#/events"}
        onClick={(e) => {
          e.preventDefault();
          document.getElementById("main")?.focus();
        }}
      >
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href={href("/events")}>
          Sightline
        </a>
        <nav aria-label="Views">
          {VIEWS.map(([path, name]) => (
            <a key={path} href={href(path)} aria-current={section === path ? "page" : undefined}>
              {name}
            </a>
          ))}
        </nav>
        {token.get() && !signIn && (
          <button
            type="button"
            class="link"
            onClick={() => {
              token.clear();
              setSignIn(true);
            }}
          >
            Forget token
          </button>
        )}
      </header>
      <main id="main" key={session} tabIndex={-1}>
        {view}
      </main>
    </>
  );
}

/** A path segment decoded, or undefined when it is not valid percent-encoding. */
function decoded(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}

function TokenPrompt({ onAccepted }: { onAccepted: () => void }) {
  const [state, setState] = useState<{ checking?: boolean; refused?: boolean; noRead?: boolean; error?: unknown }>({});
  const submit = (e: Event) => {
    e.preventDefault();
    const candidate = String(new FormData(e.currentTarget as HTMLFormElement).get("token") ?? "").trim();
    if (!candidate) return setState({ refused: true });
    setState({ checking: true });
    checkToken(candidate).then(
      (verdict) => {
        if (verdict === "refused") return setState({ refused: true });
        if (verdict === "no-read") return setState({ noRead: true });
        token.set(candidate);
        onAccepted();
      },
      (error) => setState({ error }),
    );
  };
  return (
    <section class="sign-in" aria-labelledby="sign-in-title">
      <h1 id="sign-in-title">This service needs a token</h1>
      <p>
        Paste an API token with the <code>read</code> scope. It is kept for this browser tab only and sent with each
        request; closing the tab forgets it.
      </p>
      <form onSubmit={submit}>
        <label>
          API token
          <input
            name="token"
            type="password"
            autocomplete="off"
            required
            aria-invalid={state.refused || state.noRead ? "true" : undefined}
            aria-describedby={state.refused || state.noRead ? "token-refused" : undefined}
          />
        </label>
        <button type="submit" disabled={state.checking}>
          {state.checking ? "Checking…" : "Use this token"}
        </button>
      </form>
      {state.refused && (
        <p id="token-refused" class="problem" role="alert">
          The service refused that token. Check it and try again.
        </p>
      )}
      {state.noRead && (
        <p id="token-refused" class="problem" role="alert">
          That token works, but its client lacks the read scope the console needs. Use a token with the read scope.
        </p>
      )}
      {state.error !== undefined && (
        <p class="problem" role="alert">
          {state.error instanceof ApiError && state.error.unreachable
            ? "The query service cannot be reached to check the token. Try again in a moment."
            : String((state.error as Error).message ?? state.error)}
        </p>
      )}
    </section>
  );
}

render(<App />, document.getElementById("app")!);
