"""``{% taskstate_scripts %}`` under a Content Security Policy: every tag it writes carries
the page's nonce, whichever way the nonce arrives."""

from __future__ import annotations

import re

import pytest
from django.template import Context, Template
from django.test import RequestFactory

pytestmark = pytest.mark.django_db


def tags(html: str) -> list[str]:
    return re.findall(r"<(?:script|link)\b[^>]*>", html)


def render(source: str, **context) -> str:
    return Template("{% load taskstate %}" + source).render(Context(context))


def test_without_a_nonce_no_tag_has_one(rf: RequestFactory):
    html = render("{% taskstate_scripts %}", request=rf.get("/"))
    assert len(tags(html)) == 5
    assert "nonce" not in html


def test_an_explicit_nonce_goes_on_every_script_and_the_stylesheet(rf: RequestFactory):
    html = render("{% taskstate_scripts nonce=n %}", request=rf.get("/"), n="abc123")
    assert len(tags(html)) == 5
    assert all('nonce="abc123"' in tag for tag in tags(html))


def test_the_request_nonce_is_used_as_django_csp_sets_it(rf: RequestFactory):
    request = rf.get("/")
    request.csp_nonce = "from-the-request"  # django-csp and Django 6 both set this
    html = render("{% taskstate_scripts %}", request=request)
    assert all('nonce="from-the-request"' in tag for tag in tags(html))


def test_a_nonce_is_escaped(rf: RequestFactory):
    html = render("{% taskstate_scripts nonce=n %}", request=rf.get("/"), n='"><script>')
    assert '<script>"' not in html
    assert "&quot;&gt;&lt;script&gt;" in html


@pytest.mark.django6
def test_django_6_csp_middleware_puts_the_tags_nonce_in_its_header(rf: RequestFactory, settings):
    from django.http import HttpResponse
    from django.middleware.csp import ContentSecurityPolicyMiddleware  # type: ignore[import-not-found]
    from django.utils.csp import CSP  # type: ignore[import-not-found]

    settings.SECURE_CSP = {"default-src": [CSP.SELF], "script-src": [CSP.SELF, CSP.NONCE]}

    def page(request):
        return HttpResponse(render("{% taskstate_scripts %}", request=request))

    response = ContentSecurityPolicyMiddleware(page)(rf.get("/"))
    header = response["Content-Security-Policy"]
    match = re.search(r"'nonce-([^']+)'", header)
    assert match, (header, response.content)
    nonce = match.group(1)
    html = response.content.decode()
    assert len(tags(html)) == 5
    assert all(f'nonce="{nonce}"' in tag for tag in tags(html))
