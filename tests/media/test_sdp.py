"""SDP offer/answer: our own round trip and offers as SIPp, baresip and pjsua send them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.sdp import NegotiatedMedia, SdpError, answer_offer, make_offer, negotiated_from_answer, parse_sdp


def crlf(text: str) -> str:
    return "\r\n".join(line.strip() for line in text.strip().splitlines()) + "\r\n"


# SIPp 3.6 built-in uac scenario (-sn uac)
SIPP_UAC = crlf("""
    v=0
    o=user1 53655765 2353687637 IN IP4 127.0.0.1
    s=-
    c=IN IP4 127.0.0.1
    t=0 0
    m=audio 6000 RTP/AVP 0
    a=rtpmap:0 PCMU/8000
""")

# SIPp uac_pcap scenario (PCMA + RFC 2833 events)
SIPP_UAC_PCAP = crlf("""
    v=0
    o=user1 53655765 2353687637 IN IP4 127.0.0.1
    s=-
    c=IN IP4 127.0.0.1
    t=0 0
    m=audio 6000 RTP/AVP 8 101
    a=rtpmap:8 PCMA/8000
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-11,16
""")

# baresip 1.0 with opus, g722, g711 and the video module loaded
BARESIP = crlf("""
    v=0
    o=- 1853621950 3409573447 IN IP4 127.0.0.1
    s=-
    c=IN IP4 127.0.0.1
    t=0 0
    a=tool:baresip 1.0.0
    m=audio 10374 RTP/AVP 96 9 0 8 101
    b=AS:128
    a=rtpmap:96 opus/48000/2
    a=fmtp:96 stereo=1;sprop-stereo=1
    a=rtpmap:9 G722/8000
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-15
    a=rtcp-rsize
    a=sendrecv
    a=label:1
    a=ssrc:1577613377 cname:bcd1a4ea-9a2a-45a3-b0a8-0b3a2f0d2c0d
    m=video 10376 RTP/AVP 100
    b=AS:1000
    a=rtpmap:100 H264/90000
    a=fmtp:100 packetization-mode=0;profile-level-id=42002a
    a=sendrecv
""")

# pjsua 2.15 default codec list: media-level c=, telephone-event at three rates
PJSUA = crlf("""
    v=0
    o=- 3920191234 3920191234 IN IP4 127.0.0.1
    s=pjmedia
    b=AN:117
    t=0 0
    a=X-nat:0
    m=audio 4000 RTP/AVP 96 97 98 99 3 8 0 9 120 121
    c=IN IP4 127.0.0.1
    b=TIAS:96000
    a=rtcp:4001 IN IP4 127.0.0.1
    a=sendrecv
    a=rtpmap:96 speex/16000
    a=rtpmap:97 speex/8000
    a=rtpmap:98 speex/32000
    a=rtpmap:99 iLBC/8000
    a=fmtp:99 mode=30
    a=rtpmap:3 GSM/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:0 PCMU/8000
    a=rtpmap:9 G722/8000
    a=rtpmap:120 telephone-event/16000
    a=fmtp:120 0-16
    a=rtpmap:121 telephone-event/8000
    a=fmtp:121 0-16
    a=ssrc:1139376585 cname:5b4a3bb34b2a4bb0
""")


def test_our_offer_answered_by_ourselves_round_trips() -> None:
    offer = make_offer("127.0.0.1", 40000, session_id=7)
    answer, theirs = answer_offer(offer, "127.0.0.1", 40002, session_id=9)
    ours = negotiated_from_answer(offer, answer)
    assert theirs == NegotiatedMedia("127.0.0.1", 40000, "PCMU", 0, 101, 20, "sendrecv")
    assert ours == NegotiatedMedia("127.0.0.1", 40002, "PCMU", 0, 101, 20, "sendrecv")
    parsed = parse_sdp(answer)
    assert parsed.origin == "- 9 1 IN IP4 127.0.0.1"
    assert [m.formats for m in parsed.media] == [("0", "101")]


def test_offer_renders_what_we_support() -> None:
    offer = make_offer("10.1.2.3", 5004, session_id=1, version=3, direction="sendonly")
    assert offer.endswith("\r\n")
    sdp = parse_sdp(offer)
    (m,) = sdp.media
    assert (m.media, m.port, m.proto, m.formats) == ("audio", 5004, "RTP/AVP", ("0", "8", "101"))
    assert m.rtpmap() == {0: ("PCMU", 8000), 8: ("PCMA", 8000), 101: ("TELEPHONE-EVENT", 8000)}
    assert sdp.direction_of(m) == "sendonly"
    assert m.attribute("ptime") == "20"
    assert sdp.origin.split()[1:3] == ["1", "3"]


def test_offer_refuses_unknown_direction() -> None:
    with pytest.raises(ValueError, match="sendrcv"):
        make_offer("127.0.0.1", 5004, session_id=1, direction="sendrcv")


def test_sipp_uac_pcmu_without_telephone_event() -> None:
    answer, media = answer_offer(SIPP_UAC, "127.0.0.1", 7000, session_id=1)
    assert media == NegotiatedMedia("127.0.0.1", 6000, "PCMU", 0, None, 20, "sendrecv")
    assert "m=audio 7000 RTP/AVP 0\r\n" in answer
    assert "telephone-event" not in answer


def test_sipp_pcap_pcma_keeps_peer_fmtp() -> None:
    answer, media = answer_offer(SIPP_UAC_PCAP, "127.0.0.1", 7000, session_id=1)
    assert (media.codec, media.payload_type, media.dtmf_payload_type) == ("PCMA", 8, 101)
    assert "a=fmtp:101 0-11,16\r\n" in answer


def test_baresip_opus_first_and_video_rejected_in_order() -> None:
    answer, media = answer_offer(BARESIP, "127.0.0.1", 7000, session_id=1)
    assert (media.codec, media.payload_type, media.dtmf_payload_type) == ("PCMU", 0, 101)
    assert media.remote_port == 10374
    parsed = parse_sdp(answer)
    assert [(m.media, m.port) for m in parsed.media] == [("audio", 7000), ("video", 0)]
    assert parsed.media[1].formats == ("100",)  # offered formats echoed on the rejected line


def test_pjsua_media_level_connection_and_peer_dtmf_payload_type() -> None:
    answer, media = answer_offer(PJSUA, "127.0.0.1", 7000, session_id=1)
    assert media == NegotiatedMedia("127.0.0.1", 4000, "PCMA", 8, 121, 20, "sendrecv")
    assert "a=rtpmap:121 telephone-event/8000" in answer
    assert "120" not in answer.split("m=audio")[1]


def test_answer_accepted_by_offerer_from_pjsua_view() -> None:
    answer, _ = answer_offer(PJSUA, "127.0.0.1", 7000, session_id=1)
    assert negotiated_from_answer(PJSUA, answer) == NegotiatedMedia(
        "127.0.0.1", 7000, "PCMA", 8, 121, 20, "sendrecv"
    )


@pytest.mark.parametrize(
    ("offered", "ours"),
    [("sendrecv", "sendrecv"), ("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive")],
)
def test_direction_is_reversed_for_us(offered: str, ours: str) -> None:
    offer = make_offer("127.0.0.1", 4000, session_id=1, direction=offered)
    answer, media = answer_offer(offer, "127.0.0.1", 5000, session_id=2)
    assert media.direction == ours
    assert f"a={ours}\r\n" in answer
    assert negotiated_from_answer(offer, answer).direction == offered


def test_legacy_hold_with_zero_address() -> None:
    held = SIPP_UAC.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
    answer, media = answer_offer(held, "127.0.0.1", 7000, session_id=1)
    assert media.direction == "inactive"
    assert not media.sends
    assert not media.receives
    assert "a=inactive" in answer
    held_sendonly = held.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU/8000\r\na=sendonly")
    assert answer_offer(held_sendonly, "127.0.0.1", 7000, session_id=1)[1].direction == "recvonly"


def test_answerer_holding_with_zero_address_stops_our_sending() -> None:
    offer = make_offer("127.0.0.1", 4000, session_id=1)
    answer, _ = answer_offer(offer, "127.0.0.1", 5000, session_id=2)
    media = negotiated_from_answer(offer, answer.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0"))
    assert media.direction == "recvonly"


def test_nothing_acceptable_is_488_naming_the_offer() -> None:
    g729 = crlf("""
        v=0
        o=- 1 1 IN IP4 127.0.0.1
        s=-
        c=IN IP4 127.0.0.1
        t=0 0
        m=audio 4000 RTP/AVP 18 101
        a=rtpmap:18 G729/8000
        a=rtpmap:101 telephone-event/8000
        m=video 4002 RTP/AVP 96
        a=rtpmap:96 VP8/90000
    """)
    with pytest.raises(SdpError) as info:
        answer_offer(g729, "127.0.0.1", 5000, session_id=1)
    assert info.value.status == 488
    assert "18 G729/8000" in str(info.value)
    assert "m=video" in str(info.value)
    assert "PCMU" in str(info.value)


def test_srtp_only_offer_is_refused() -> None:
    savp = SIPP_UAC.replace("RTP/AVP", "RTP/SAVP") + "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc\r\n"
    with pytest.raises(SdpError, match="RTP/SAVP"):
        answer_offer(savp, "127.0.0.1", 5000, session_id=1)


def test_second_audio_line_rejected_first_kept() -> None:
    two = SIPP_UAC + "m=audio 6002 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    answer, media = answer_offer(two, "127.0.0.1", 7000, session_id=1)
    assert media.remote_port == 6000
    assert [m.port for m in parse_sdp(answer).media] == [7000, 0]


def test_zero_port_offer_line_stays_rejected() -> None:
    offer = SIPP_UAC.replace("m=audio 6000 RTP/AVP 0", "m=audio 0 RTP/AVP 0") + "m=audio 6002 RTP/AVP 8\r\n"
    answer, media = answer_offer(offer, "127.0.0.1", 7000, session_id=1)
    assert (media.remote_port, media.codec) == (6002, "PCMA")
    assert [m.port for m in parse_sdp(answer).media] == [0, 7000]


def test_ptime_from_offer_is_reported() -> None:
    offer = SIPP_UAC + "a=ptime:30\r\n"
    assert answer_offer(offer, "127.0.0.1", 7000, session_id=1)[1].ptime == 30


def test_answer_with_other_mline_count_is_refused() -> None:
    offer = make_offer("127.0.0.1", 4000, session_id=1)
    answer, _ = answer_offer(offer, "127.0.0.1", 5000, session_id=2)
    with pytest.raises(SdpError, match="2 m-lines, offer had 1"):
        negotiated_from_answer(offer, answer + "m=video 0 RTP/AVP 96\r\n")


def test_answer_choosing_unoffered_codec_is_refused() -> None:
    offer = make_offer("127.0.0.1", 4000, session_id=1).replace(" 0 8 101", " 0 101")
    answer, _ = answer_offer(SIPP_UAC_PCAP, "127.0.0.1", 5000, session_id=2)
    with pytest.raises(SdpError, match="payload type 8"):
        negotiated_from_answer(offer, answer)


def test_answer_rejecting_everything_is_refused() -> None:
    offer = make_offer("127.0.0.1", 4000, session_id=1)
    answer, _ = answer_offer(offer, "127.0.0.1", 5000, session_id=2)
    with pytest.raises(SdpError, match="rejected every stream"):
        negotiated_from_answer(offer, answer.replace("m=audio 5000", "m=audio 0"))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("", "not an SDP body"),
        ("hello\r\n", "not an SDP body"),
        ("v=0\r\nm=audio x RTP/AVP 0\r\n", "m='audio x RTP/AVP 0'"),
        ("v=0\r\nc=IN XX 1.2.3.4\r\n", "c='IN XX 1.2.3.4'"),
        ("v=0\r\nbogus\r\n", "'bogus'"),
    ],
)
def test_malformed_sdp_is_400(body: str, fragment: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_sdp(body)
    assert info.value.status == 400
    assert fragment in str(info.value)


@given(
    host=st.ip_addresses(v=4).map(str).filter(lambda h: h != "0.0.0.0"),
    port=st.integers(1, 65535),
    sid=st.integers(0, 2**62),
    version=st.integers(0, 2**31),
    direction=st.sampled_from(["sendrecv", "sendonly", "recvonly", "inactive"]),
)
def test_offer_answer_round_trip_property(
    host: str, port: int, sid: int, version: int, direction: str
) -> None:
    offer = make_offer(host, port, session_id=sid, version=version, direction=direction)
    answer, theirs = answer_offer(offer, "127.0.0.1", 9000, session_id=sid + 1, version=version)
    ours = negotiated_from_answer(offer, answer)
    assert (theirs.remote_host, theirs.remote_port) == (host, port)
    assert (ours.remote_host, ours.remote_port) == ("127.0.0.1", 9000)
    assert ours.direction == direction
    assert parse_sdp(offer).media[0].port == port


@given(st.text(max_size=300))
def test_parser_raises_only_sdp_error_on_garbage(text: str) -> None:
    status = None
    try:
        parse_sdp("v=0\r\n" + text)
    except SdpError as exc:
        status = exc.status
    assert status in (None, 400)


@given(st.data())
def test_answering_mutated_real_offers_raises_only_sdp_error(data: st.DataObject) -> None:
    lines = data.draw(st.sampled_from([SIPP_UAC, SIPP_UAC_PCAP, BARESIP, PJSUA])).split("\r\n")
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "dup", "garble"]))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        else:
            lines[i] = lines[i][:2] + data.draw(st.text(alphabet="0123456789 /:abcIPN.=-", max_size=20))
        if not lines:
            lines = ["v=0"]
    offer = "\r\n".join(lines)
    status: int | None = None
    try:
        answer, media = answer_offer(offer, "127.0.0.1", 7000, session_id=1)
    except SdpError as exc:
        status = exc.status
    else:
        assert media.codec in ("PCMU", "PCMA")
        assert len(parse_sdp(answer).media) == len(parse_sdp(offer).media)
    assert status in (None, 400, 488)
