"""The Forewarn dashboard: ``streamlit run dashboard/app.py`` (or ``forewarn dashboard``).

Pages live in ``dashboard/views/`` (not ``pages/``: Streamlit would serve a ``pages/`` folder
next to app.py as pages of their own, without app.py); the process-wide store and Kafka consumer come from
:mod:`dashboard.runtime`. Every page runs after :func:`dashboard.ui.require_user`, which shows
the login form and stops the run while nobody is signed in (when a users file is configured).
"""

from __future__ import annotations

import streamlit as st

from dashboard import ui

st.set_page_config(page_title="Forewarn", page_icon=":material/monitor_heart:", layout="wide")

pages = [
    st.Page("views/fleet.py", title="Fleet", icon=":material/factory:", default=True),
    st.Page("views/machine.py", title="Machine", icon=":material/precision_manufacturing:"),
    st.Page("views/alerts.py", title="Alerts", icon=":material/notifications_active:"),
    st.Page("views/models.py", title="Models", icon=":material/model_training:"),
    st.Page("views/pipeline.py", title="Pipeline", icon=":material/account_tree:"),
]
# The page is chosen from the URL before the login check, so a sign-in lands on the page asked for;
# its links show only once signed in.
navigation = st.navigation(pages, position=ui.navigation_position())
user = ui.require_user()
ui.sidebar_user(user)
ui.sidebar_preferences(user)
ui.sidebar_status()
navigation.run()
