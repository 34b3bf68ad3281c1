"""`{{ thing.state|state }}`: a state as words on every page (a builtin, no {% load %})."""

from __future__ import annotations

from django import template

from ccm.states import state_label

register = template.Library()
register.filter("state", state_label)
