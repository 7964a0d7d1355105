"""Pure: the webhook URL check shared by the API and delivery."""

from __future__ import annotations

import httpx
import pytest

from alerts.urls import MAX_URL_LENGTH, BadWebhookUrl, check_webhook_url

GOOD = ["http://127.0.0.1:8080/hook", "https://[::1]:8443/x", "http://[2001:db8::1]/",
        "https://oapi.dingtalk.com/robot/send?access_token=abc",
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k#frag", "http://例子.测试/x",
        "http://h:65535", "http://h:1/a@b?c=@"]

BAD = {
    "http://127.0.0.1:99999/": "port",
    "http://h:65536/": "port",
    "http://h:0/": "port",
    "http://h:-1/": "port",
    "http://h:8080:9/": "port",
    "http://[::1/x": "IPv6",
    "http://[1:2:3]/": "IPv6",
    "http://[::1]x/": "IPv6",
    "http://1.2.3.999/": "IPv4",
    "http://user:pw@h/": "credentials",
    "http://user@h/": "credentials",
    "http://@h/": "credentials",
    "ftp://h/": "http://",
    "javascript:alert(1)": "http://",
    "http:///x": "host",
    "http://": "host",
    "": "empty",
    "http://exa mple/": "whitespace",
    "http://h/\n": "whitespace",
    "http://h\\x/": "backslash",
    "http://h/" + "a" * MAX_URL_LENGTH: "longer",
}


@pytest.mark.parametrize("url", GOOD)
def test_good_urls_pass_unchanged_and_httpx_can_send_to_them(url: str) -> None:
    assert check_webhook_url(url) == url
    httpx.Request("POST", url)  # what delivery does with it: must not raise


@pytest.mark.parametrize(("url", "why"), BAD.items())
def test_bad_urls_are_refused_saying_why(url: str, why: str) -> None:
    with pytest.raises(BadWebhookUrl, match=why):
        check_webhook_url(url)


@pytest.mark.parametrize("value", [None, 42, b"http://h/", ["http://h/"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(BadWebhookUrl):
        check_webhook_url(value)
