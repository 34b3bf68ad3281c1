"""Print batches in the back-office: close, hand over and mark mailed (actions calling the
services), download the stream and manifest, record returned mail by the reference on the
cover sheet."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from ccm.admin_site import confirm_first
from notifications import selectors
from notifications.channels import printing
from notifications.models import PrintBatch, PrintItem

# A batch's page lists its first letters; all of them are in the print items list.
INLINE_ITEMS = 200


class PrintItemInline(admin.TabularInline):
    model = PrintItem
    fields = readonly_fields = (
        "sequence",
        "recipient_name",
        "address",
        "pages",
        "document",
        "document_sha256",
        "delivery_state",
        "returned_at",
        "return_reason",
    )
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = f"letters (the first {INLINE_ITEMS}; every one under Print items)"

    def get_queryset(self, request):
        # Sequences run 1..n in every batch, so this is each batch's first letters.
        return (
            super()
            .get_queryset(request)
            .filter(sequence__lte=INLINE_ITEMS)
            .select_related("delivery", "document")
        )

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="address")
    def address(self, item: PrintItem) -> str:
        return " / ".join(item.postal_address)

    @admin.display(description="delivery")
    def delivery_state(self, item: PrintItem) -> str:
        return item.delivery.state


def _run(modeladmin, request, queryset, step, *, verb: str, done: str) -> None:
    for batch in queryset.order_by("pk"):
        try:
            step(batch=batch, by=request.user)
        except (printing.PrintError, PermissionDenied) as exc:
            modeladmin.message_user(
                request, f"Could not {verb} {batch.reference}: {exc}", messages.ERROR
            )
        else:
            modeladmin.message_user(request, f"{done} {batch.reference}.", messages.SUCCESS)


@admin.register(PrintBatch)
class PrintBatchAdmin(admin.ModelAdmin):
    list_display = [
        "reference",
        "state",
        "item_count",
        "pages",
        "created_at",
        "closed_at",
        "handed_over_at",
        "mailed_at",
        "files",
    ]
    list_filter = ["state"]
    readonly_fields = [
        "state",
        "item_count",
        "pages",
        "files",
        "stream_sha256",
        "manifest_sha256",
        "created_at",
        "closed_at",
        "closed_by",
        "handed_over_at",
        "handed_over_by",
        "mailed_at",
        "mailed_by",
    ]
    exclude = ["stream", "manifest"]
    inlines = [PrintItemInline]
    actions = ["close", "hand_over", "mark_mailed"]
    change_list_template = "admin/notifications/printbatch/change_list.html"

    def has_add_permission(self, request):
        return False  # batches open themselves when the first letter joins

    def has_change_permission(self, request, obj=None):
        return False  # a batch moves on through its actions, not by editing

    def has_delete_permission(self, request, obj=None):
        return False

    def has_close_permission(self, request) -> bool:
        return request.user.has_perm(printing.CLOSE_PERMISSION)

    def has_hand_over_permission(self, request) -> bool:
        return request.user.has_perm(printing.HAND_OVER_PERMISSION)

    def has_record_outcome_permission(self, request) -> bool:
        return request.user.has_perm(printing.OUTCOME_PERMISSION)

    @admin.action(description="Close: produce the print stream and manifest", permissions=["close"])
    def close(self, request, queryset):
        _run(self, request, queryset, printing.print_batch_close, verb="close", done="Closed")

    @admin.action(description="Hand over to the mail house", permissions=["hand_over"])
    def hand_over(self, request, queryset):
        page = confirm_first(
            self,
            request,
            queryset,
            consequence="The mail house will print and post these batches as they are.",
        )
        if page is not None:
            return page
        _run(
            self,
            request,
            queryset,
            printing.print_batch_hand_over,
            verb="hand over",
            done="Handed over",
        )

    @admin.action(description="Mark mailed (letters delivered)", permissions=["record_outcome"])
    def mark_mailed(self, request, queryset):
        page = confirm_first(
            self,
            request,
            queryset,
            consequence="Every letter in these batches is recorded as posted to its customer.",
        )
        if page is not None:
            return page
        _run(
            self,
            request,
            queryset,
            printing.print_batch_mark_mailed,
            verb="mark mailed",
            done="Marked mailed",
        )

    @admin.display(description="pages")
    def pages(self, batch: PrintBatch) -> str:
        # `page_count` is the print stream's, known once the batch is closed; before that the
        # letters' own pages say how big it is so far (0 would read as "nothing to print").
        if batch.stream:
            return f"{batch.page_count} pages in the print stream ({batch.item_count} letters)"
        letters = selectors.print_batch_letter_pages(batch)
        return (
            f"{letters} pages in {batch.item_count} letter{'s' if batch.item_count != 1 else ''}"
            " (cover sheets are added when the batch is closed)"
        )

    @admin.display(description="files")
    def files(self, batch: PrintBatch) -> str:
        if not batch.stream:
            return "—"
        return format_html(
            '<a href="{}">stream (PDF)</a> · <a href="{}">manifest (CSV)</a>',
            reverse("admin:notifications_printbatch_stream", args=[batch.pk]),
            reverse("admin:notifications_printbatch_manifest", args=[batch.pk]),
        )

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:pk>/stream.pdf",
                wrap(self.stream_view),
                name="notifications_printbatch_stream",
            ),
            path(
                "<int:pk>/manifest.csv",
                wrap(self.manifest_view),
                name="notifications_printbatch_manifest",
            ),
            path("return/", wrap(self.return_view), name="notifications_printbatch_return"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra = {"can_record_returns": self.has_record_outcome_permission(request)}
        return super().changelist_view(request, {**(extra_context or {}), **extra})

    def _download(self, request, pk: int, field: str, content_type: str, suffix: str):
        if not self.has_view_permission(request):
            raise PermissionDenied
        batch = get_object_or_404(PrintBatch, pk=pk)
        file = getattr(batch, field)
        if not file:
            raise Http404(f"{batch.reference} is {batch.state}; it has no {field} yet.")
        # A download, not a page: the mail house's files are saved, never opened in the tab.
        response = FileResponse(
            file.open("rb"),
            content_type=content_type,
            as_attachment=True,
            filename=f"{batch.reference}{suffix}",
        )
        response["X-Content-SHA256"] = getattr(batch, f"{field}_sha256")
        return response

    def stream_view(self, request, pk: int):
        return self._download(request, pk, "stream", "application/pdf", ".pdf")

    def manifest_view(self, request, pk: int):
        return self._download(request, pk, "manifest", "text/csv; charset=utf-8", "-manifest.csv")

    def return_view(self, request):
        if not self.has_record_outcome_permission(request):
            raise PermissionDenied
        form = ReturnedMailForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            item = form.cleaned_data["item"]
            try:
                printing.print_item_return(
                    item=item, reason=form.cleaned_data["reason"], by=request.user
                )
            except printing.PrintError as exc:
                messages.error(request, str(exc))
            else:
                messages.success(
                    request,
                    f"Recorded {item.provider_id} ({item.recipient_name}) as returned; "
                    "the postal address is marked invalid.",
                )
                return redirect("admin:notifications_printbatch_return")
        context = {
            **self.admin_site.each_context(request),
            "title": "Record returned mail",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/notifications/printbatch/return.html", context)


class ReturnedMailForm(forms.Form):
    reference = forms.CharField(
        max_length=50, help_text='As on the cover sheet in the envelope, e.g. "batch-12/345".'
    )
    reason = forms.CharField(
        max_length=300, help_text='As the post marked it, e.g. "addressee gone away".'
    )

    def clean_reference(self) -> str:
        reference = self.cleaned_data["reference"]
        item = selectors.print_item_by_reference(reference)
        if item is None:
            raise forms.ValidationError(f"No letter {reference!r}: check the cover sheet.")
        self.cleaned_data["item"] = item
        return reference


@admin.register(PrintItem)
class PrintItemAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "recipient_name",
        "customer",
        "pages",
        "added_at",
        "returned_at",
        "return_reason",
    ]
    list_filter = ["batch__state", ("returned_at", admin.EmptyFieldListFilter)]
    search_fields = ["recipient_name", "customer__external_ref", "document_sha256"]
    list_select_related = ["customer"]
    readonly_fields = [f.name for f in PrintItem._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
