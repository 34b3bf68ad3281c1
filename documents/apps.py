from __future__ import annotations

from django.apps import AppConfig


class DocumentsConfig(AppConfig):
    name = "documents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from ccm import demo
        from ccm.roles import Role
        from ccm.selectors import HomeLink, register_home_link
        from documents import demo as documents_demo
        from documents import review, services

        services.register_approvable(proof=review.version_proof)
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
