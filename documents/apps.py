from __future__ import annotations

from django.apps import AppConfig


class DocumentsConfig(AppConfig):
    name = "documents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from ccm import demo
        from ccm.roles import Role
        from ccm.selectors import HomeLink, register_home_link
        from documents import demo as documents_demo
        from documents import review, selectors, services
        from documents.models import Template, TemplateVersion

        services.register_approvable(proof=review.version_proof)
        # Published versions kept by versions_for_sending are read again after any change.
        for model in (Template, TemplateVersion):
            uid = f"documents.published.{model.__name__}"
            post_save.connect(selectors.templates_changed, sender=model, dispatch_uid=uid)
            post_delete.connect(selectors.templates_changed, sender=model, dispatch_uid=f"{uid}-")
        demo.register_seeder(documents_demo.seed_library)
        for role, link in [
            (
                Role.TEMPLATE_AUTHOR,
                HomeLink(
                    "Templates",
                    "authoring-library",
                    "Write templates in the browser: drafts, live previews of every channel, "
                    "sign-off and publishing",
                    permission="documents.add_templateversion",
                ),
            ),
            (
                Role.TEMPLATE_AUTHOR,
                HomeLink(
                    "Template versions",
                    "admin:documents_templateversion_changelist",
                    "Every version and its state, in the back-office",
                ),
            ),
            (
                Role.COMPLIANCE_REVIEWER,
                HomeLink("Templates", "admin:documents_template_changelist", "The library"),
            ),
            (
                Role.OPERATIONS,
                HomeLink(
                    "Document archive",
                    "admin:documents_document_changelist",
                    "Archived documents; regenerate and verify their bytes",
                ),
            ),
        ]:
            register_home_link(role, link)
