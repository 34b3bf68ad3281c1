"""The agents' reprint and correspondence forms (the letter data's form is generated from the
template's schema in cases/requests/data_form.py).

Every form here links its help and its errors to the input with aria-describedby and marks an
input in error with aria-invalid.
"""

from __future__ import annotations

from django import forms

from cases.requests.models import STATED_IDENTITY_CHECKS


class AccessibleForm(forms.Form):
    """Help and errors announced with their input."""

    def full_clean(self) -> None:
        super().full_clean()
        self.refresh_aria()

    def refresh_aria(self) -> None:
        """Point each input at its help and errors (again after a service added errors)."""
        for name, bound in self._bound_items():
            ids = []
            if bound.help_text:
                ids.append(f"{bound.auto_id}_helptext")
            if name in self.errors:
                ids.append(f"{bound.auto_id}_error")
                bound.field.widget.attrs["aria-invalid"] = "true"
            if ids:
                bound.field.widget.attrs["aria-describedby"] = " ".join(ids)

    def _bound_items(self):
        return [(name, self[name]) for name in self.fields]


# --- the reprint form ------------------------------------------------------------------------


class CustomerSearchForm(forms.Form):
    q = forms.CharField(
        label="Customer reference or name",
        max_length=200,
        help_text="A reference such as NW-2048-7731, or part of the name.",
    )


class ReprintForm(AccessibleForm):
    document = forms.TypedChoiceField(
        label="Document", coerce=int, help_text="The customer's archived documents, newest first."
    )
    reason = forms.CharField(
        label="Reason",
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=2000,
        help_text="Why the customer needs a copy (lost in the post, for a mortgage application…).",
    )
    channel = forms.ChoiceField(label="Send by", widget=forms.RadioSelect)
    address = forms.CharField(
        label="Address",
        required=False,
        max_length=500,
        help_text="Leave empty for the customer's address on file. Another address needs a "
        "reviewer's release. Postal address lines are separated by “ / ”.",
    )
    identity_verification = forms.ChoiceField(
        label="How the caller's identity was verified",
        widget=forms.RadioSelect,
        choices=[(c.value, c.label) for c in STATED_IDENTITY_CHECKS],
    )
    identity_note = forms.CharField(
        label="Identity check details",
        required=False,
        max_length=500,
        help_text="Needed with “Other”: say how.",
    )

    def __init__(
        self, *args, documents: list[tuple[int, str]], channels: list[tuple[str, str]], **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.fields["document"].choices = [("", "Choose a document"), *documents]  # type: ignore[attr-defined]
        self.fields["channel"].choices = channels  # type: ignore[attr-defined]


class IdentityForm(AccessibleForm):
    identity_verification = ReprintForm.base_fields["identity_verification"]
    identity_note = ReprintForm.base_fields["identity_note"]


class TemplateChoiceForm(forms.Form):
    template = forms.ChoiceField(label="Letter template")

    def __init__(self, *args, templates: list[tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["template"].choices = [("", "Choose a template"), *templates]  # type: ignore[attr-defined]
