"""Forms the kernel's screens share with the apps' admin pages."""

from __future__ import annotations

from django import forms

from ccm.models import Decision


class AccessibleForm(forms.Form):
    """A field with an error says so to assistive technology: `aria-invalid`, and
    `aria-describedby` naming the error (and help) the field template renders with those ids."""

    def add_error(self, field, error) -> None:
        super().add_error(field, error)
        for name in self.errors:
            if name not in self.fields:
                continue
            bound = self[name]
            described = [f"{bound.auto_id}_error"]
            if bound.help_text:
                described.append(f"{bound.auto_id}_helptext")
            bound.field.widget.attrs.update(
                {"aria-invalid": "true", "aria-describedby": " ".join(described)}
            )


class DecisionForm(forms.Form):
    """A reviewer's decision on an approval; rejecting or requesting changes needs a reason,
    because the author (and the audit log) must be able to read why."""

    decision = forms.ChoiceField(
        choices=[
            (Decision.APPROVE, "Approve"),
            (Decision.REJECT, "Reject"),
            (Decision.REQUEST_CHANGES, "Request changes"),
        ],
        widget=forms.RadioSelect,
        error_messages={"required": "Choose approve, reject or request changes."},
    )
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        help_text="Required to reject or request changes: the author and the audit log read it.",
    )

    def clean(self):
        data = super().clean() or {}
        if (
            data.get("decision") in {Decision.REJECT, Decision.REQUEST_CHANGES}
            and not (data.get("comment") or "").strip()
        ):
            self.add_error("comment", "Say why when you reject or request changes.")
        return data
