"""Small helpers shared by the pages: the runtime, the signed-in user, the consumer status,
empty states and number formatting."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Final, Literal

import pandas as pd
import streamlit as st

from dashboard.auth import Authenticator, LoginError, Principal, UsersFile, is_loopback, local_principal
from dashboard.runtime import Runtime, get_runtime

__all__ = ["current_user", "duration", "empty_state", "navigation_position", "refresh_every", "require_user",
           "runtime", "sidebar_status", "sidebar_user"]

_SESSION_USER: Final = "forewarn_user"  # session_state: (user name, password generation) once signed in

START_HINT: Final = (
    "Nothing has arrived yet. Start the pipeline (`forewarn demo` runs all of it) or check that the "
    "dashboard reads the right Kafka (`--bootstrap-servers`, `--topic-prefix`)."
)


def runtime() -> Runtime:
    return get_runtime()


def refresh_every() -> float:
    return float(runtime().settings.dashboard.refresh_s)


@st.cache_resource(show_spinner=False)
def _authenticator(path: str) -> Authenticator:
    # One per process and users file: the failed-sign-in delay holds across sessions.
    return Authenticator(UsersFile(Path(path)))


def _signed_in(authenticator: Authenticator) -> Principal | None:
    held = st.session_state.get(_SESSION_USER)
    if held is None:
        return None
    user = authenticator.current(*held)
    if user is None:  # removed, or a new password since: sign in again
        del st.session_state[_SESSION_USER]
    return user


def _login_form(authenticator: Authenticator) -> None:
    st.title("Forewarn")
    with st.form("login", enter_to_submit=True):
        st.subheader("Sign in")
        name = st.text_input("User name", key="login_name", autocomplete="username")
        password = st.text_input("Password", type="password", key="login_password", autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            user = authenticator.verify(name.strip(), password)
        except LoginError as error:
            st.error(error.one_line(), icon=":material/lock:")
            return
        st.session_state[_SESSION_USER] = (user.name, authenticator.generation(user.name))
        st.rerun()


def require_user() -> Principal:
    """The session's user; shows the login form and stops the run while nobody is signed in.
    Without a users file: the local user, on a loopback address only."""
    settings = runtime().settings.dashboard
    if settings.users_file is None:
        address = str(st.get_option("server.address") or "")  # unset: every interface
        if not (is_loopback(address) or settings.allow_unauthenticated):
            st.error("This dashboard has no login and listens beyond this host: set dashboard.users_file "
                     "(forewarn dashboard users add NAME), or listen on 127.0.0.1.", icon=":material/lock:")
            st.stop()
        return local_principal()
    authenticator = _authenticator(str(settings.users_file))
    user = _signed_in(authenticator)
    if user is None:
        _login_form(authenticator)
        st.stop()
    return user


def navigation_position() -> Literal["sidebar", "hidden"]:
    """Where the page links go: hidden until someone is signed in (with a users file)."""
    local = runtime().settings.dashboard.users_file is None
    return "sidebar" if local or _SESSION_USER in st.session_state else "hidden"


def current_user() -> Principal:
    """The session's user, for a page: app.py asked already, and each page asks again, so that a
    page run on its own is behind the same login."""
    return require_user()


def sidebar_user(user: Principal) -> None:
    """Who is signed in, with which role, and a sign-out button (with a users file)."""
    with st.sidebar:
        st.markdown(f"**{user.label}** · {user.role}" + (f"  \n`{user.name}`" if user.display_name else ""))
        if runtime().settings.dashboard.users_file is not None and st.button(
                "Sign out", key="sign_out", icon=":material/logout:"):
            st.session_state.pop(_SESSION_USER, None)
            st.rerun()


def sidebar_preferences(user: Principal) -> None:
    """The signed-in user's notification preferences: an address, and whether the notifier
    emails them the alerts assigned to them."""
    from dashboard import actions
    from dashboard.errors import DashboardError

    with st.sidebar.expander("My notifications"):
        email = st.text_input("Email address", key="pref_email", placeholder="name@plant.example")
        assigned = st.checkbox("Email me the alerts assigned to me", value=True, key="pref_assigned")
        st.caption("Saving replaces what you saved before; the notifier (forewarn notify) follows it.")
        if st.button("Save", key="pref_save"):
            try:
                actions.save_preferences(runtime(), user, email, assigned)
            except DashboardError as error:
                st.error(error.one_line())
            else:
                st.success("Saved.")


def empty_state(what: str, hint: str = START_HINT) -> None:
    st.info(f"**{what}**  \n{hint}", icon=":material/hourglass_empty:")


def duration(ms: Any) -> str:
    """Milliseconds → ``3 d 4 h``, ``5 h 12 min``, ``42 s``; blank for missing values."""
    if ms is None or (isinstance(ms, float) and math.isnan(ms)) or pd.isna(ms):
        return ""
    seconds = float(ms) / 1000
    if seconds < 1:
        return f"{float(ms):.0f} ms"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        return f"{int(hours)} h {int(minutes % 60)} min"
    return f"{int(hours // 24)} d {int(hours % 24)} h"


def sidebar_status() -> None:
    """The consumer's state and what the store holds, in the sidebar (refreshed on its own)."""
    with st.sidebar:
        st.fragment(run_every=refresh_every())(_status)()


def _status() -> None:
    rt = runtime()
    status = rt.status
    if status is None:
        st.caption("Showing the store only (the Kafka consumer is off).")
    else:
        label = {"running": ":green[●] consuming", "waiting": ":orange[●] waiting",
                 "starting": ":orange[●] starting", "failed": ":red[●] failed",
                 "stopped": ":gray[●] stopped"}.get(status.state, status.state)
        st.markdown(f"**Kafka** {label}  \n`{rt.settings.kafka.bootstrap_servers}`"
                    + (f" · prefix `{rt.settings.topics.prefix}`" if rt.settings.topics.prefix else ""))
        if status.detail:
            st.caption(status.detail)
        if status.last_batch_ms:
            ago = time.time() - status.last_batch_ms / 1000
            st.caption(f"{status.records:,} records read · last batch {ago:.0f} s ago")
        if status.skipped:
            st.caption("Skipped (undecodable or unstorable): "
                       + ", ".join(f"{n:,} {role}" for role, n in sorted(status.skipped.items())))
    counts = rt.store.counts()
    st.caption(f"Store: {counts['machines']:,} machines · {counts['predictions']:,} predictions · "
               f"{counts['alert_events']:,} alert events · {counts['telemetry']:,} sensor values")
