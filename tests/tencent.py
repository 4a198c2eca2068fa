"""What Tencent IM sends: signed callback queries and bodies.

The files in ``samples/`` are the bodies from ``shared/protocol/samples``,
byte for byte.
"""

import json
import pathlib
import time

from tim_audit.ingest.signature import sign

SDKAPPID = "1400000001"
TOKEN = "xxxxyyyy"
CREATE = "Group.CallbackAfterCreateGroup"
SAMPLES = pathlib.Path(__file__).parent / "samples"


def sample(name):
    return (SAMPLES / f"{name}.json").read_bytes()


def group_body(**fields):
    """A valid create-group body; a field given as None is left out."""
    body = {
        "CallbackCommand": CREATE,
        "GroupId": "@TGS#2J4SZEAEL",
        "Operator_Account": "group_root",
        "Owner_Account": "leckie",
        "Type": "Public",
        "Name": "MyFirstGroup",
        "MemberList": [{"Member_Account": "bob"}, {"Member_Account": "peter"}],
        "EventTime": 1670574414123,
    }
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}, ensure_ascii=False).encode()


def signed_query(command=CREATE, *, token=TOKEN, request_time=None, **params):
    """The query string Tencent appends, signed now; a parameter given as
    None is left out."""
    request_time = str(int(time.time())) if request_time is None else str(request_time)
    query = {
        "SdkAppid": SDKAPPID,
        "CallbackCommand": command,
        "contenttype": "json",
        "ClientIP": "203.0.113.7",
        "OptPlatform": "RESTAPI",
        "RequestTime": request_time,
        "Sign": sign(token, request_time),
    }
    query.update(params)
    return {k: v for k, v in query.items() if v is not None}
