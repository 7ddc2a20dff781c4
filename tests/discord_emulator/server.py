"""The emulator: Discord's REST routes a bot uses, the gateway websocket and a CDN, on 127.0.0.1.

One :class:`Emulator` runs inside an asyncio loop (aiohttp's server). The real discord.py
client talks to it after ``bot.client.use_local_discord(emulator.base_url)``. Every request is
recorded in :attr:`Emulator.requests`; every broken rule (see :mod:`.validate`) is appended to
:attr:`Emulator.violations` and answered with the status Discord would give. Faults are
injected with :meth:`Emulator.fail` (REST; ``cloudflare=True`` for the edge's 429), :meth:`drop`,
:meth:`reconnect`, :meth:`invalidate_session`, :meth:`withhold_acks`, :meth:`request_heartbeat`,
:meth:`reset_token`, :meth:`require_sharding` (gateway) and the ``fault`` / ``expires_in`` of
:meth:`add_attachment` (CDN: attachment URLs are signed and expire, as Discord's do).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from . import payloads, validate

TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.emulat.or-token-for-tests-only-0123456789"
API = "/api/v10"
ATTACHMENT_LIFETIME_S = 24 * 3600.0  # how long a signed attachment URL stays valid
# Cloudflare's answer to an IP it rate-limits (error 1015): a web page, not Discord's JSON.
CLOUDFLARE_429 = ("<!DOCTYPE html><html><head><title>Access denied | discord.com used Cloudflare to restrict "
                  "access</title></head><body><h1>Error 1015</h1><h2>You are being rate limited</h2>"
                  "<p>The owner of this website (discord.com) has banned you temporarily from accessing this "
                  "website.</p></body></html>")


@dataclass
class Recorded:
    """One request the bot made."""

    method: str
    path: str
    at: float
    status: int = 0
    body: Any = None  # the JSON payload (``payload_json`` for multipart)
    files: list[tuple[str, int]] = field(default_factory=list)  # (filename, bytes)
    fault: str | None = None


RECORD = web.RequestKey("record", Recorded) if hasattr(web, "RequestKey") else "record"


@dataclass
class Message:
    """A message an interaction produced, as the user sees it."""

    id: int
    kind: str  # "response" (type 4), "deferred" (type 5 placeholder), "followup"
    at: float
    content: str | None = None
    embeds: list = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    ephemeral: bool = False
    loading: bool = False
    deleted: bool = False


@dataclass
class Interaction:
    """One dispatched interaction and everything the bot did with it."""

    id: int
    token: str
    name: str
    shard: int
    dispatched_at: float
    acked_at: float | None = None
    response_type: int | None = None
    answered_at: float | None = None  # first type-4 response or follow-up
    original: Message | None = None
    followups: list[Message] = field(default_factory=list)
    context: int = validate.GUILD  # where it was used: 0 GUILD, 1 BOT_DM, 2 PRIVATE_CHANNEL
    install: int = validate.GUILD_INSTALL  # which installation authorized it

    @property
    def messages(self) -> list[Message]:
        return [m for m in ([self.original] if self.original else []) + self.followups if not m.deleted]

    @property
    def answer(self) -> Message:
        """The message that carries the result: the last follow-up, else the original."""
        if self.followups:
            return self.followups[-1]
        if self.original is None or self.original.loading:
            raise AssertionError(f"interaction {self.name!r} was never answered")
        return self.original


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    times: int
    retry_after: float | None = None
    cloudflare: bool = False  # a 429 from Cloudflare's edge: HTML, no Via, no rate-limit headers
    hits: list[float] = field(default_factory=list)


@dataclass
class CdnFile:
    data: bytes
    content_type: str | None
    fault: str | None = None  # "404", "stall", "oversize"
    requests: int = 0  # downloads served (refusals not counted)
    refusals: list[int] = field(default_factory=list)  # statuses of refused downloads


@dataclass
class HeartbeatRequest:
    """An op 1 the emulator sent; ``answered_at`` is when the client's heartbeat came back."""

    shard: int
    ws: Any
    sent_at: float
    answered_at: float | None = None

    @property
    def delay(self) -> float | None:
        return None if self.answered_at is None else self.answered_at - self.sent_at


class Session:
    """A gateway session: its sequence numbers and every event sent, for RESUME."""

    def __init__(self, shard: int, shard_count: int):
        self.id = secrets.token_hex(16)
        self.shard = shard
        self.shard_count = shard_count
        self.seq = 0
        self.events: list[dict] = []
        self.ws: web.WebSocketResponse | None = None
        self.compressor: Any = None
        self.request: web.Request | None = None
        self.silent: web.WebSocketResponse | None = None  # a zombie connection: nothing sent on it

    async def send(self, payload: dict) -> None:
        if self.ws is None or self.ws.closed or self.ws is self.silent:
            return  # kept in self.events; a RESUME replays it
        await send(self.ws, self.compressor, payload)


def json_response(obj: Any, *, status: int = 200, headers: dict | None = None) -> web.Response:
    """JSON as Discord sends it: ``Content-Type: application/json`` exactly, no charset
    (discord.py decodes a body as JSON only on that exact header)."""
    return web.Response(body=json.dumps(obj).encode(), status=status, headers=headers,
                        content_type="application/json")


async def send(ws: web.WebSocketResponse, compressor: Any, payload: dict) -> None:
    text = json.dumps(payload)
    if compressor is None:
        await ws.send_str(text)
    else:  # zlib-stream: one deflate stream per connection, each message ends with a sync flush
        await ws.send_bytes(compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH))


class Emulator:
    """Discord on 127.0.0.1. ``async with Emulator() as emu: ...`` or ``await emu.start()``."""

    def __init__(self, *, token: str = TOKEN, shards: int = 1, heartbeat_ms: int = 41250,
                 size_limit: int = validate.MAX_FILE_BYTES, keep_files: bool = True):
        self.token = token
        self.keep_files = keep_files  # False: record file names and sizes only (load runs)
        self.shards = shards
        self.heartbeat_ms = heartbeat_ms
        self.size_limit = size_limit
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self.commands: dict[str | None, list[dict]] = {}  # guild id (None: global) -> synced commands
        self.interactions: dict[int, Interaction] = {}
        self.sessions: dict[str, Session] = {}
        self.gateway_log: list[tuple[float, int, str]] = []  # (time, shard, what happened)
        self.heartbeats = 0
        self.heartbeat_requests: list[HeartbeatRequest] = []
        self.cdn: dict[str, CdnFile] = {}
        self._cdn_key = secrets.token_bytes(32)  # signs attachment URLs (the hm parameter)
        self.faults: list[Fault] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()
        self.app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._record])
        r = self.app.router
        r.add_get(f"{API}/gateway/bot", self._gateway_bot)
        r.add_get(f"{API}/gateway", self._gateway_bot)
        r.add_get(f"{API}/users/@me", self._me)
        r.add_get(f"{API}/oauth2/applications/@me", self._application)
        r.add_put(f"{API}/applications/{{app}}/commands", self._sync)
        r.add_put(f"{API}/applications/{{app}}/guilds/{{guild}}/commands", self._sync)
        r.add_post(f"{API}/interactions/{{iid}}/{{token}}/callback", self._callback)
        r.add_post(f"{API}/webhooks/{{app}}/{{token}}", self._followup)
        r.add_route("*", f"{API}/webhooks/{{app}}/{{token}}/messages/@original", self._original)
        r.add_get("/attachments/{channel}/{att}/{filename}", self._cdn)
        r.add_get("/gateway", self._gateway)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Emulator:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for session in self.sessions.values():
            if session.ws is not None and not session.ws.closed:
                await session.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate, timeout: float = 30.0, what: str = "a condition"):
        """Wait until ``predicate()`` is truthy (re-checked whenever a request or event arrives)."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not (result := predicate()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"emulator: timed out after {timeout} s waiting for {what}")
                try:
                    await asyncio.wait_for(self._changed.wait(), min(left, 0.25))
                except asyncio.TimeoutError:
                    pass
        return result

    def violate(self, rule: str) -> None:
        self.violations.append(rule)

    # --- REST: recording, auth, faults -----------------------------------------------------

    def fail(self, method: str, path: str, status: int, *, times: int = 1, retry_after: float | None = None,
             cloudflare: bool = False) -> Fault:
        """Answer the next ``times`` requests matching ``method`` and the ``path`` regex with ``status``.

        A 429 is Discord's own (JSON, rate-limit headers, ``Via``) unless ``cloudflare``: then it
        is the edge's ban page, as an IP that made too many invalid requests gets it (HTML, no
        ``Via``, no ``X-RateLimit-*``, ``Retry-After`` only if ``retry_after`` is given)."""
        fault = Fault(method, re.compile(path), status, times, retry_after, cloudflare)
        self.faults.append(fault)
        return fault

    @web.middleware
    async def _record(self, request: web.Request, handler):
        rec = Recorded(request.method, request.path, time.monotonic())
        self.requests.append(rec)
        request[RECORD] = rec
        try:
            resp = self._inject(request, rec) if request.path.startswith(API) else None
            if resp is not None and request.can_read_body:
                await self._body(request)  # record what the refused request carried
            if resp is None and request.path.startswith(API) and self._needs_auth(request):
                resp = self._error(401, 0, "401: Unauthorized")
            if resp is None:
                resp = await handler(request)
        except web.HTTPException as exc:
            rec.status = exc.status
            raise
        rec.status = resp.status
        await self._notify()
        return resp

    def _needs_auth(self, request: web.Request) -> bool:
        # Interaction callbacks and webhooks authenticate with the interaction token in the path.
        if request.path.startswith((f"{API}/webhooks/", f"{API}/interactions/")):
            return False
        return request.headers.get("Authorization") != f"Bot {self.token}"

    def _inject(self, request: web.Request, rec: Recorded) -> web.Response | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and fault.path.search(request.path):
                fault.times -= 1
                fault.hits.append(time.monotonic())
                rec.fault = f"{fault.status}" + (" cloudflare" if fault.cloudflare else "")
                if fault.status == 429 and fault.cloudflare:
                    headers = {"Server": "cloudflare", "CF-RAY": secrets.token_hex(8) + "-AMS"}
                    if fault.retry_after is not None:
                        headers["Retry-After"] = str(round(fault.retry_after))
                    return web.Response(status=429, text=CLOUDFLARE_429, content_type="text/html", headers=headers)
                if fault.status == 429:
                    # Discord's rate-limit answer; "Via" marks it as coming from Discord's edge
                    # (discord.py's webhook client only retries 429s that carry it).
                    retry = fault.retry_after or 1.0
                    headers = {"Retry-After": str(retry), "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                               "X-RateLimit-Reset-After": str(retry), "X-RateLimit-Scope": "user",
                               "X-RateLimit-Bucket": "emulated", "Via": "1.1 google"}
                    return json_response({"message": "You are being rate limited.", "retry_after": retry,
                                              "global": False, "code": 0}, status=429, headers=headers)
                return self._error(fault.status, 0, f"{fault.status}: emulated failure")
        return None

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        return json_response({"code": code, "message": message}, status=status)

    async def _body(self, request: web.Request) -> tuple[Any, dict[str, bytes]]:
        """The JSON payload and the uploaded files of a JSON or multipart request."""
        files: dict[str, bytes] = {}
        if request.content_type.startswith("multipart/"):
            body: Any = None
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                elif part.name and part.name.startswith("files["):
                    files[part.filename or part.name] = await part.read()
        else:
            body = await request.json() if request.can_read_body else None
        rec = request[RECORD]
        rec.body, rec.files = body, [(n, len(d)) for n, d in files.items()]
        return body, files

    # --- REST: login and commands ----------------------------------------------------------

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        return json_response({"url": f"ws://127.0.0.1:{self.port}/gateway", "shards": self.shards,
                                  "session_start_limit": {"total": 1000, "remaining": 999,
                                                          "reset_after": 14400000, "max_concurrency": 1}})

    async def _me(self, request: web.Request) -> web.Response:
        return json_response(payloads.BOT_USER)

    async def _application(self, request: web.Request) -> web.Response:
        return json_response(payloads.application())

    async def _sync(self, request: web.Request) -> web.Response:
        body, _ = await self._body(request)
        if request.match_info["app"] != str(payloads.APPLICATION_ID):
            self.violate(f"command sync for unknown application {request.match_info['app']}")
            return self._error(403, 50001, "Missing Access")
        problems = validate.command_problems(body)
        if problems:
            self.violations += [f"command sync: {p}" for p in problems]
            return self._error(400, 50035, "Invalid Form Body: " + "; ".join(problems))
        guild = request.match_info.get("guild")
        synced = []
        for cmd in body:
            out = {"id": str(payloads.snowflake()), "application_id": str(payloads.APPLICATION_ID),
                   "version": str(payloads.snowflake()), "type": cmd.get("type", 1), "name": cmd["name"],
                   "description": cmd.get("description", ""), "options": cmd.get("options", []),
                   "default_member_permissions": cmd.get("default_member_permissions"),
                   "dm_permission": cmd.get("dm_permission", True), "nsfw": cmd.get("nsfw", False),
                   "contexts": cmd.get("contexts"), "integration_types": cmd.get("integration_types")}
            if guild:
                out["guild_id"] = guild
            synced.append(out)
        self.commands[guild] = synced
        return json_response(synced)

    # --- REST: interaction responses -------------------------------------------------------

    def _interaction(self, token: str) -> Interaction | None:
        return next((i for i in self.interactions.values() if i.token == token), None)

    def _message(self, it: Interaction, kind: str, data: dict | None, files: dict[str, bytes],
                 ephemeral: bool, loading: bool = False) -> Message:
        data = data or {}
        kept = dict(files) if self.keep_files else dict.fromkeys(files, b"")
        return Message(payloads.snowflake(), kind, time.monotonic(), data.get("content"), data.get("embeds") or [],
                       kept, ephemeral, loading)

    def _message_json(self, msg: Message, it: Interaction) -> dict:
        attachments = [payloads.attachment(payloads.snowflake(), name, f"{self.base_url}/attachments/1/1/{name}",
                                           len(data), "image/png") for name, data in msg.files.items()]
        return payloads.message(msg.id, 1, payloads.BOT_USER, content=msg.content or "", attachments=attachments,
                                embeds=msg.embeds, flags=validate.EPHEMERAL if msg.ephemeral else 0,
                                kind=20, application_id=payloads.APPLICATION_ID)

    def _check_message(self, where: str, data: Any, files: dict[str, bytes], *, new: bool) -> list[str]:
        problems = validate.message_problems(data, [(n, len(d)) for n, d in files.items()],
                                             size_limit=self.size_limit, new=new)
        self.violations += [f"{where}: {p}" for p in problems]
        return problems

    async def _callback(self, request: web.Request) -> web.Response:
        body, files = await self._body(request)
        now = time.monotonic()
        it = self.interactions.get(int(request.match_info["iid"]))
        if it is None or it.token != request.match_info["token"]:
            self.violate(f"callback for an unknown interaction {request.match_info['iid']}")
            return self._error(404, 10062, "Unknown interaction")
        where = f"/{it.name} callback"
        if it.acked_at is not None:
            self.violate(f"{where}: the interaction was already acknowledged")
            return self._error(400, 40060, "Interaction has already been acknowledged.")
        if now - it.dispatched_at > validate.ACK_WINDOW_S:
            self.violate(f"{where}: first response {now - it.dispatched_at:.2f} s after dispatch, "
                         f"limit {validate.ACK_WINDOW_S:.0f} s")
            return self._error(404, 10062, "Unknown interaction")
        kind = (body or {}).get("type")
        if kind not in validate.COMMAND_RESPONSE_TYPES:
            self.violate(f"{where}: response type {kind!r} is not valid for an application command")
            return self._error(400, 50035, "Invalid Form Body")
        data = (body or {}).get("data") or {}
        if kind == 4 and self._check_message(where, data, files, new=True):
            return self._error(400, 50035, "Invalid Form Body")
        if kind == 5 and (problems := validate.message_problems({"flags": data.get("flags", 0)}, [], new=False)):
            self.violations += [f"{where}: {p}" for p in problems]
            return self._error(400, 50035, "Invalid Form Body")
        ephemeral = bool((data.get("flags") or 0) & validate.EPHEMERAL)
        it.acked_at, it.response_type = now, kind
        it.original = self._message(it, "response" if kind == 4 else "deferred", data, files, ephemeral,
                                    loading=kind == 5)
        if kind == 4:
            it.answered_at = now
        await self._notify()
        if "with_response" not in request.query:
            return web.Response(status=204)
        return json_response({
            "interaction": {"id": str(it.id), "type": 2, "response_message_id": str(it.original.id),
                            "response_message_loading": kind == 5, "response_message_ephemeral": ephemeral},
            "resource": {"type": kind, "message": self._message_json(it.original, it)},
        })

    def _token_usable(self, it: Interaction | None, where: str) -> web.Response | None:
        if it is None:
            self.violate(f"{where}: unknown interaction token")
            return self._error(404, 10015, "Unknown Webhook")
        if it.acked_at is None:
            self.violate(f"{where}: the interaction was not acknowledged first")
            return self._error(404, 10015, "Unknown Webhook")
        if time.monotonic() - it.dispatched_at > validate.TOKEN_WINDOW_S:
            self.violate(f"{where}: the interaction token expired (15 min)")
            return self._error(401, 50027, "Invalid Webhook Token")
        return None

    async def _followup(self, request: web.Request) -> web.Response:
        body, files = await self._body(request)
        it = self._interaction(request.match_info["token"])
        where = f"/{it.name if it else '?'} follow-up"
        if (refusal := self._token_usable(it, where)) is not None:
            return refusal
        if self._check_message(where, body, files, new=True):
            return self._error(400, 50035, "Invalid Form Body")
        if it.install == validate.USER_INSTALL and len(it.followups) >= validate.MAX_USER_INSTALL_FOLLOWUPS:
            self.violate(f"{where}: a user-installed app may send at most "
                         f"{validate.MAX_USER_INSTALL_FOLLOWUPS} follow-ups per interaction")
            return self._error(400, 50035, "Invalid Form Body")
        flags = (body or {}).get("flags") or 0
        original = it.original
        if original is not None and original.loading:
            # Discord's rule: the first follow-up after a defer fills in the "thinking…"
            # message and keeps the defer's visibility, whatever flags it asks for.
            msg = self._message(it, "followup", body, files, original.ephemeral)
            msg.id = original.id
            original.loading, original.deleted = False, True
        else:
            msg = self._message(it, "followup", body, files, bool(flags & validate.EPHEMERAL))
        it.followups.append(msg)
        if it.answered_at is None:
            it.answered_at = msg.at
        await self._notify()
        return json_response(self._message_json(msg, it))

    async def _original(self, request: web.Request) -> web.Response:
        body, files = await self._body(request) if request.method == "PATCH" else (None, {})
        it = self._interaction(request.match_info["token"])
        where = f"/{it.name if it else '?'} {request.method} @original"
        if (refusal := self._token_usable(it, where)) is not None:
            return refusal
        msg = it.original
        if msg is None or msg.deleted:
            return self._error(404, 10008, "Unknown Message")
        if request.method == "DELETE":
            msg.deleted = True
            await self._notify()
            return web.Response(status=204)
        if request.method == "PATCH":
            if self._check_message(where, body, files, new=False):
                return self._error(400, 50035, "Invalid Form Body")
            body = body or {}
            if "content" in body:
                msg.content = body["content"]
            if "embeds" in body:
                msg.embeds = body["embeds"] or []
            msg.files.update(files if self.keep_files else dict.fromkeys(files, b""))
            msg.loading = False
            await self._notify()
        return json_response(self._message_json(msg, it))

    # --- CDN ---------------------------------------------------------------------------------

    def add_attachment(self, filename: str, data: bytes, content_type: str | None = "image/png", *,
                       width: int | None = None, height: int | None = None, fault: str | None = None,
                       announced_size: int | None = None, expires_in: float = ATTACHMENT_LIFETIME_S) -> dict:
        """Host ``data`` on the CDN and return its attachment object. ``fault``: "404" (deleted),
        "stall" (headers, then no bytes), "oversize" (serves more than ``announced_size``).

        The URL is signed like Discord's: ``ex`` (hex unix time it expires, ``expires_in`` s from
        now; negative hands out an already expired link), ``is`` (issued) and ``hm`` (the
        signature). Past ``ex``, or with a signature that does not match, the CDN answers 404."""
        att_id = payloads.snowflake()
        path = f"/attachments/{payloads.snowflake()}/{att_id}/{filename}"
        self.cdn[path] = CdnFile(data, content_type, fault)
        size = len(data) if announced_size is None else announced_size
        issued = int(time.time())
        ex, is_ = f"{int(issued + expires_in):x}", f"{issued:x}"
        url = f"{self.base_url}{path}?ex={ex}&is={is_}&hm={self._sign(path, ex, is_)}&"
        return payloads.attachment(att_id, filename, url, size, content_type, width, height)

    def _sign(self, path: str, ex: str, is_: str) -> str:
        return hmac.new(self._cdn_key, f"{path}|{ex}|{is_}".encode(), hashlib.sha256).hexdigest()

    def _link_valid(self, request: web.Request) -> bool:
        """Whether the request's ``ex``/``is``/``hm`` are this CDN's signature and not expired."""
        ex, is_, hm = (request.query.get(k, "") for k in ("ex", "is", "hm"))
        try:
            expires = int(ex, 16)
        except ValueError:
            return False
        return hmac.compare_digest(hm, self._sign(request.path, ex, is_)) and time.time() < expires

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        found = self.cdn.get(request.path)
        if found is None or found.fault == "404":
            return web.Response(status=404, text="Not Found")
        if not self._link_valid(request):
            found.refusals.append(404)
            return web.Response(status=404, text="This content is no longer available.")
        found.requests += 1
        if found.fault == "stall":
            resp = web.StreamResponse(headers={"Content-Type": found.content_type or "application/octet-stream"})
            await resp.prepare(request)
            await resp.write(found.data[:16])
            await asyncio.sleep(3600)  # until the client gives up and the server closes us
            return resp
        return web.Response(body=found.data, content_type=found.content_type or "application/octet-stream")

    # --- gateway -----------------------------------------------------------------------------

    def _log(self, shard: int, what: str) -> None:
        self.gateway_log.append((time.monotonic(), shard, what))

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        if request.query.get("v") != "10" or request.query.get("encoding", "json") != "json":
            self.violate(f"gateway: connect with ?v=10&encoding=json, got {dict(request.query)}")
        compressor = zlib.compressobj() if request.query.get("compress") == "zlib-stream" else None
        await send(ws, compressor, {"op": 10, "d": {"heartbeat_interval": self.heartbeat_ms}, "s": None, "t": None})
        session: Session | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op, data = payload.get("op"), payload.get("d")
                if op == 1:  # heartbeat
                    self.heartbeats += 1
                    for asked in self.heartbeat_requests:
                        if asked.ws is ws and asked.answered_at is None:
                            asked.answered_at = time.monotonic()
                    if session is not None and data not in (None, session.seq) and data > session.seq:
                        self.violate(f"gateway: heartbeat with sequence {data} beyond the last sent {session.seq}")
                    if session is not None and session.silent is ws:
                        continue  # a zombie connection: the beat goes unacknowledged
                    await send(ws, compressor, {"op": 11, "d": None, "s": None, "t": None})
                elif op == 2:  # identify
                    session = await self._identify(ws, compressor, request, data or {})
                    if session is None:
                        break
                elif op == 6:  # resume
                    session = await self._resume(ws, compressor, request, data or {})
                elif op in (3, 4, 8):  # presence, voice state, request members: accepted, ignored
                    pass
                else:
                    self.violate(f"gateway: unknown opcode {op}")
                    await ws.close(code=4001, message=b"Unknown opcode")
        finally:
            if session is not None and session.ws is ws:
                session.ws = None
                self._log(session.shard, f"closed {ws.close_code}")
            await self._notify()
        return ws

    def _live(self, shard: int) -> Session | None:
        found = [s for s in self.sessions.values() if s.shard == shard]
        return found[-1] if found else None

    async def _identify(self, ws, compressor, request, data: dict) -> Session | None:
        if data.get("token") != self.token:
            self.violate("gateway: IDENTIFY with a wrong token")
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        shard = data.get("shard") or [0, 1]
        if shard[1] != self.shards or not 0 <= shard[0] < shard[1]:
            self.violate(f"gateway: IDENTIFY with shard {shard}, but /gateway/bot said {self.shards} shard(s)")
            await ws.close(code=4011 if shard[1] < self.shards else 4010, message=b"Invalid shard.")
            return None
        if not isinstance(data.get("intents"), int):
            self.violate("gateway: IDENTIFY without intents")
        session = Session(shard[0], shard[1])
        self.sessions[session.id] = session
        session.ws, session.compressor, session.request = ws, compressor, request
        self._log(session.shard, "identify")
        await self.dispatch(session, "READY", payloads.ready(session.id, f"ws://127.0.0.1:{self.port}/gateway", shard))
        return session

    async def _resume(self, ws, compressor, request, data: dict) -> Session | None:
        session = self.sessions.get(data.get("session_id"))
        if data.get("token") != self.token or session is None or (data.get("seq") or 0) > session.seq:
            self._log(-1 if session is None else session.shard, "resume refused")
            await send(ws, compressor, {"op": 9, "d": False, "s": None, "t": None})
            return None
        old = session.ws
        session.ws, session.compressor, session.request = ws, compressor, request
        if old is not None and not old.closed:
            await old.close(code=4000)
        self._log(session.shard, "resume")
        for event in session.events:  # replay what was missed, in order
            if event["s"] > (data.get("seq") or 0):
                await send(ws, compressor, event)
        await self.dispatch(session, "RESUMED", {})
        return session

    async def dispatch(self, session: Session, event: str, data: dict) -> None:
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.events.append(payload)
        await session.send(payload)
        await self._notify()

    # --- gateway faults ----------------------------------------------------------------------

    async def drop(self, shard: int = 0) -> None:
        """The network fails: the shard's TCP connection is cut without a close frame."""
        session = self._live(shard)
        if session is not None and session.request is not None and session.request.transport is not None:
            self._log(shard, "drop")
            session.request.transport.abort()
            session.ws = None

    async def reconnect(self, shard: int = 0) -> None:
        """Op 7 RECONNECT: Discord asks the client to reconnect and resume."""
        session = self._live(shard)
        if session is not None and session.ws is not None:
            self._log(shard, "op 7")
            await send(session.ws, session.compressor, {"op": 7, "d": None, "s": None, "t": None})

    async def invalidate_session(self, shard: int = 0, resumable: bool = False) -> None:
        """Op 9 INVALID_SESSION: the client must identify again (``resumable=False``)."""
        session = self._live(shard)
        if session is not None and session.ws is not None:
            self._log(shard, f"op 9 {resumable}")
            await send(session.ws, session.compressor, {"op": 9, "d": resumable, "s": None, "t": None})
            if not resumable:
                del self.sessions[session.id]

    def withhold_acks(self, shard: int = 0) -> None:
        """A zombie connection: the socket stays open, but Discord stops acknowledging heartbeats
        and sends nothing more on it (events are kept and replayed on RESUME). Discord's rule: a
        client that gets no ACK must close the connection (not with 1000/1001) and resume."""
        session = self._live(shard)
        if session is not None and session.ws is not None:
            self._log(shard, "acks withheld")
            session.silent = session.ws

    async def request_heartbeat(self, shard: int = 0) -> HeartbeatRequest:
        """Op 1 from Discord: the client must send a heartbeat at once, not at its next interval."""
        session = self._live(shard)
        if session is None or session.ws is None:
            raise RuntimeError(f"shard {shard} is not connected")
        asked = HeartbeatRequest(shard, session.ws, time.monotonic())
        self.heartbeat_requests.append(asked)
        self._log(shard, "op 1")
        await send(session.ws, session.compressor, {"op": 1, "d": None, "s": None, "t": None})
        return asked

    async def close_sessions(self, code: int, reason: str) -> None:
        """Discord closes every gateway connection with ``code``; the sessions cannot be resumed."""
        for session in list(self.sessions.values()):
            if session.ws is not None and not session.ws.closed:
                self._log(session.shard, f"close {code}")
                await session.ws.close(code=code, message=reason.encode())
        self.sessions.clear()

    async def reset_token(self) -> str:
        """The owner resets the bot token in the Developer Portal: the old token stops working
        at once (REST answers 401) and every gateway session is closed with 4004. Returns the
        new token."""
        self.token = TOKEN.rsplit(".", 1)[0] + "." + secrets.token_urlsafe(27)
        await self.close_sessions(4004, "Authentication failed.")
        return self.token

    async def require_sharding(self, shards: int) -> None:
        """The bot grew: ``GET /gateway/bot`` now recommends ``shards`` and every session is
        closed with 4011 (Sharding required)."""
        self.shards = shards
        await self.close_sessions(4011, "Sharding required.")

    def connected(self, shard: int = 0) -> bool:
        session = self._live(shard)
        return session is not None and session.ws is not None and not session.ws.closed

    # --- users invoking commands -------------------------------------------------------------

    def command(self, name: str, kind: int = validate.CHAT_INPUT, *, context: int = validate.GUILD,
                install: int | None = None) -> tuple[dict, str | None]:
        """The synced command ``name`` of ``kind`` that Discord would offer in ``context`` to an
        app installed as ``install`` (default: GUILD_INSTALL, PRIVATE_CHANNEL needs USER_INSTALL),
        and the guild it was synced to (None: global). Raises ``LookupError`` saying why not:
        the bot did not register the command for that install type or context."""
        install = self.default_install(context) if install is None else install
        found = [(cmd, guild) for guild, commands in self.commands.items() for cmd in commands
                 if cmd["name"] == name and cmd["type"] == kind]
        if not found:
            raise LookupError(f"no {name!r} command of type {kind} was synced; synced: {self.commands}")
        reasons = []
        for cmd, guild in found:
            if (why := self._unavailable(cmd, guild, context, install)) is None:
                return cmd, guild
            reasons.append(why)
        raise LookupError(f"Discord would not offer {name!r} in context {validate.CONTEXTS[context]} with "
                          f"{validate.INSTALL_TYPES[install]}: " + "; ".join(reasons))

    @staticmethod
    def default_install(context: int) -> int:
        return validate.USER_INSTALL if context == validate.PRIVATE_CHANNEL else validate.GUILD_INSTALL

    @staticmethod
    def _unavailable(cmd: dict, guild: str | None, context: int, install: int) -> str | None:
        if guild is not None:  # guild commands: only in that guild, through its installation
            if context != validate.GUILD or install != validate.GUILD_INSTALL:
                return f"it was synced to guild {guild} only"
            return None
        # Discord's defaults: integration_types = the app's install types (this app: guild only),
        # contexts = all three.
        installs = cmd.get("integration_types") or [validate.GUILD_INSTALL]
        contexts = cmd.get("contexts") or list(validate.CONTEXTS)
        if install not in installs:
            return f"integration_types is {installs}"
        if context not in contexts:
            return f"contexts is {contexts}"
        if context == validate.PRIVATE_CHANNEL and install != validate.USER_INSTALL:
            return "other people's DMs and group DMs are reachable only through a user install"
        return None

    def guild_for_shard(self, shard: int) -> int:
        """A guild id that Discord routes to ``shard`` ((guild_id >> 22) % shard_count)."""
        base = 900000000000000000 >> 22
        return ((base - base % self.shards) + shard) << 22

    async def invoke(self, name: str, options: dict[str, Any] | None = None, *, user_id: int | None = None,
                     guild_id: int | None = None, shard: int | None = None, context: int = validate.GUILD,
                     install: int | None = None) -> Interaction:
        """A user runs ``/name``; attachment options are attachment objects (see :meth:`add_attachment`).
        ``context``: 0 in a guild channel, 1 in the DM with the bot, 2 in a DM with someone else
        (see :meth:`command` for ``install``)."""
        cmd, synced_guild = self.command(name, context=context, install=install)
        spec = {o["name"]: o for o in cmd["options"]}
        opts, resolved = [], {}
        for key, value in (options or {}).items():
            kind = spec[key]["type"]
            if kind == 11:
                resolved.setdefault("attachments", {})[value["id"]] = value
                value = value["id"]
            opts.append({"name": key, "type": kind, "value": value})
        data = {"id": cmd["id"], "name": name, "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        return await self._send_interaction(name, data, synced_guild, user_id, guild_id, shard, context, install)

    async def invoke_message_menu(self, name: str, message: dict, *, user_id: int | None = None,
                                  guild_id: int | None = None, shard: int | None = None,
                                  context: int = validate.GUILD, install: int | None = None) -> Interaction:
        """A user right-clicks ``message`` (see :meth:`posted`, :meth:`forwarded`) and picks Apps > ``name``."""
        cmd, synced_guild = self.command(name, validate.MESSAGE, context=context, install=install)
        data = {"id": cmd["id"], "name": name, "type": validate.MESSAGE, "target_id": message["id"],
                "resolved": {"messages": {message["id"]: message}}}
        return await self._send_interaction(name, data, synced_guild, user_id, guild_id, shard, context, install)

    def posted(self, attachments: list[dict] = (), *, content: str = "", embeds: list | None = None,
               author_id: int = 4242) -> dict:
        """A message someone posted in the channel."""
        return payloads.message(payloads.snowflake(), 1, payloads.user(author_id), content=content,
                                attachments=list(attachments), embeds=embeds)

    def forwarded(self, original: dict, *, author_id: int = 4343) -> dict:
        """Someone forwards ``original`` into the channel: the new message has no attachments of
        its own; they are in ``message_snapshots[0].message.attachments``."""
        return payloads.forwarded(payloads.snowflake(), 1, payloads.user(author_id), original)

    async def _send_interaction(self, name, data, synced_guild, user_id, guild_id, shard, context=validate.GUILD,
                                install=None) -> Interaction:
        install = self.default_install(context) if install is None else install
        if context != validate.GUILD:
            guild_id, target = None, 0  # DMs arrive on shard 0
        else:
            if synced_guild is not None:
                data["guild_id"] = synced_guild
                guild_id = int(synced_guild)
            elif guild_id is None:
                guild_id = self.guild_for_shard(shard or 0)
            target = (guild_id >> 22) % self.shards
        session = self._live(target)
        if session is None:
            raise RuntimeError(f"shard {target} never connected")
        iid, token = payloads.snowflake(), "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        user_id = user_id if user_id is not None else payloads.snowflake()
        it = Interaction(iid, token, name, target, time.monotonic(), context=context, install=install)
        self.interactions[iid] = it
        await self.dispatch(session, "INTERACTION_CREATE",
                            payloads.interaction(iid, token, data, user_id=user_id, guild_id=guild_id, channel_id=1,
                                                 size_limit=self.size_limit, context=context, install=install))
        return it

    async def answered(self, it: Interaction, timeout: float = 60.0) -> Interaction:
        """Wait for ``it``'s answer (a type-4 response or a follow-up)."""
        await self.wait_for(lambda: it.answered_at is not None, timeout, f"an answer to /{it.name}")
        return it
