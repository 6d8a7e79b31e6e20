"""The gRPC servicer: translates coordinator.proto messages to CoordinatorService calls and back, nothing more.
Errors become status codes in one place, ``coordinator.rpc_errors.RpcErrorInterceptor``."""

from __future__ import annotations

import math

from coordinator.access import Credentials
from coordinator.run_admin import RunAdministration
from coordinator.service import CoordinatorService, PullHeader, RunState
from coordinator.storage import JoinTokenRecord, PeerBanRecord, RejectedSnapshotRecord, VersionRecord
from coordinator.swarm_access import Grant
from nomoat_proto import coordinator_pb2 as pb
from nomoat_proto import coordinator_pb2_grpc as pb_grpc
from swarm.join_proof import Proof
from swarm.manifest import Manifest
from swarm.peer_access import token_to_bytes
from swarm.receipts import SignedReceipt
from swarm.sample_wire import chunks_of

def version_message(record: VersionRecord) -> pb.VersionInfo:
    chain = [str(link) for link in Manifest.from_bytes(record.manifest.encode()).chain] if record.manifest else []
    return pb.VersionInfo(
        run_name=record.run_name, version=record.version, sha256=record.sha256, epoch=record.epoch,
        samples=record.samples, eval_loss=record.eval_loss, base_eval_loss=record.base_eval_loss,
        created_at=record.created_at.isoformat(), contributors=list(record.contributors), release=record.release,
        collected=record.collected_at is not None, chain=chain,
    )


def rejected_message(record: RejectedSnapshotRecord) -> pb.RejectedSnapshot:
    return pb.RejectedSnapshot(
        attempted_at=record.attempted_at.isoformat(), epoch=-1 if record.epoch is None else record.epoch,
        eval_loss=math.nan if record.eval_loss is None else record.eval_loss, reason=record.reason,
    )


def header_message(header: PullHeader) -> pb.PullHeader:
    message = pb.PullHeader(version=version_message(header.record),
                            files=[pb.FileEntry(name=f.name, size=f.size, sha256=f.sha256) for f in header.files])
    if header.manifest is not None:
        message.manifest, message.signature_json = header.manifest.payload, header.manifest.signature_json()
    return message


def run_message(state: RunState) -> pb.RunStatus:
    spec, record = state.spec, state.record
    return pb.RunStatus(
        run_name=record.name, spec_hash=record.spec_hash, base_model=spec.base_model if spec else "",
        dataset=spec.dataset if spec else "", shards=spec.shards if spec else 0,
        created_at=record.created_at.isoformat(), samples_trained=state.samples_trained,
        live_workers=state.live_workers,
        shard_status=[pb.ShardStatus(shard=s.shard, live_workers=s.live_workers, epoch=s.epoch, samples=s.samples)
                      for s in state.shards],
        versions=[version_message(record) for record in state.versions],
        rejected_snapshots=[rejected_message(record) for record in state.rejected],
        parent=(spec.parent or "") if spec else "", unavailable=state.unavailable, state=state.settings.state,
        join_policy=state.settings.join_policy, private=state.settings.private,
        banned_peers=[ban_message(ban) for ban in state.bans],
    )


def ban_message(record: PeerBanRecord) -> pb.PeerBanInfo:
    return pb.PeerBanInfo(run_name=record.run_name, peer_id=record.peer_id, reason=record.reason,
                          banned_by=record.banned_by, banned_at=record.banned_at.isoformat())


def grant_message(grant: Grant | None, authority_public_key: bytes) -> pb.AccessGrant | None:
    if grant is None:
        return None
    return pb.AccessGrant(access_token=token_to_bytes(grant.token), authority_public_key=authority_public_key,
                          expires_at=grant.expires_at, renew_after_s=grant.renew_after_s)


def token_message(record: JoinTokenRecord) -> pb.JoinTokenInfo:
    return pb.JoinTokenInfo(token_id=record.id, run_name=record.run_name, label=record.label,
                            created_at=record.created_at.isoformat(),
                            revoked_at=record.revoked_at.isoformat() if record.revoked_at else "")


def proof_of(request) -> Proof | None:
    """The signature fields of a Join or Leave request; None when it is unsigned."""
    if not request.public_key and not request.signature:
        return None
    return Proof(public_key=request.public_key, signature=request.signature, timestamp=request.timestamp)


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, service: CoordinatorService, admin: RunAdministration | None = None):
        self.service, self.admin = service, admin

    def LaunchRun(self, request, context):
        run = self.service.launch(request.spec_json, request.join_policy or "open", request.private)
        return pb.LaunchRunResponse(
            run_name=run.spec.name, spec_hash=run.spec.content_hash,
            base_model_fingerprint=run.record.base_model_fingerprint, dataset_digest=run.record.dataset_digest,
            train_samples=len(run.split.train), eval_samples=len(run.split.eval),
        )

    def Join(self, request, context):
        plan = self.service.join(request.run_name, request.peer_id, request.display_name, request.max_shards,
                                 request.device, proof_of(request), Credentials.of_context(context))
        spec = plan.runtime.spec
        return pb.Assignment(
            worker_id=plan.worker.worker_id, run_name=spec.name, spec_json=spec.to_json(),
            spec_hash=spec.content_hash, base_model_fingerprint=plan.runtime.record.base_model_fingerprint,
            shards=list(plan.worker.shards), initial_peers=plan.initial_peers, data_slice=plan.worker.data_slice,
            data_slices=spec.data_slices, slice_samples=plan.slice_samples, report_interval_s=5.0,
            base_model_revision=plan.runtime.record.base_model_revision or "",
            access=grant_message(plan.grant, self._authority_key()),
        )

    def _authority_key(self) -> bytes:
        swarm = self.service.swarm
        return swarm.identity.public_key_der if swarm is not None else b""

    def RenewAccessToken(self, request, context):
        grant = self.service.renew_access(request.worker_id, proof_of(request))
        return grant_message(grant, self._authority_key())

    def ReportPeers(self, request, context):
        reports = [(r.peer_id, r.count, r.reason) for r in request.reports]
        accepted, banned = self.service.report_peers(request.worker_id, reports, proof_of(request))
        return pb.PeerReportResponse(accepted=accepted, banned=banned)

    def BanPeer(self, request, context):
        return ban_message(self.service.gated_swarm().ban(request.run_name, request.peer_id, request.reason))

    def UnbanPeer(self, request, context):
        self.service.gated_swarm().unban(request.run_name, request.peer_id)
        return pb.PeerBanInfo(run_name=request.run_name, peer_id=request.peer_id)

    def StreamDataSlice(self, request, context):
        yield from chunks_of(self.service.data_slice(request.run_name, request.data_slice, request.worker_id))

    def SubmitReceipts(self, request, context):
        receipts = [SignedReceipt(payload=r.payload, public_key=r.public_key, signature=r.signature)
                    for r in request.receipts]
        results = self.service.submit_receipts(receipts)
        return pb.ReceiptResults(results=[
            pb.ReceiptResult(receipt_id=r.receipt_id, status=r.status, message=r.message,
                             verification=r.verification) for r in results])

    def GetLeaderboard(self, request, context):
        rows, total, omitted = self.service.leaderboard(request.run_name, request.include_unverified)
        return pb.Leaderboard(
            run_name=request.run_name, include_unverified=request.include_unverified, total_samples=total,
            omitted_entries=omitted,
            entries=[pb.LeaderboardEntry(
                peer_id=row.peer_id, display_name=row.display_name, samples=row.samples,
                verified_samples=row.verified_samples, compute_hours=row.compute_seconds / 3600.0,
                share=row.samples / total if total else 0.0, last_seen=row.last_seen.isoformat(),
                receipts=row.receipts, disputed_receipts=row.disputed_receipts) for row in rows],
        )

    def Leave(self, request, context):
        self.service.leave(request.worker_id, proof_of(request))
        return pb.LeaveResponse(ok=True)

    def HandOverState(self, request, context):
        outcome = self.service.hand_over(request.worker_id, request.epoch, proof_of(request))
        response = pb.HandOverResponse(kept=outcome.kept, message=outcome.message,
                                       retry_after_s=outcome.retry_after_s)
        if outcome.version is not None:
            response.version.CopyFrom(version_message(outcome.version))
        return response

    def GetStatus(self, request, context):
        states = self.service.status(request.run_name, request.include_archived, Credentials.of_context(context))
        return pb.StatusResponse(runs=[run_message(state) for state in states])

    def PublishNow(self, request, context):
        outcome = self.service.publish_now(request.run_name)
        response = pb.PublishResponse(published=outcome.published, message=outcome.message)
        if outcome.version is not None:
            response.version.CopyFrom(version_message(outcome.version))
        return response

    def PullAdapter(self, request, context):
        pieces = self.service.pull(request.run_name, request.version, dict(request.offsets), request.chunk_bytes)
        for piece in pieces:
            if isinstance(piece, PullHeader):
                yield pb.PullChunk(header=header_message(piece))
            else:
                name, offset, data = piece
                yield pb.PullChunk(chunk=pb.FileChunk(name=name, offset=offset, data=data))

    def GetVersion(self, request, context):
        header = self.service.version_manifest(request.run_name, request.version)
        message = header_message(header)
        return pb.VersionManifest(version=message.version, manifest=message.manifest,
                                  signature_json=message.signature_json)

    def MarkRelease(self, request, context):
        return version_message(self.service.mark_release(request.run_name, request.version, request.release))

    def GetCoordinatorInfo(self, request, context):
        return pb.CoordinatorInfo(coordinator_id=self.service.access.coordinator_id,
                                  default_run=self.service.default_run(Credentials.of_context(context)))

    def CreateJoinToken(self, request, context):
        token, record = self._admin().create_join_token(request.run_name, request.label)
        return pb.JoinTokenCreated(info=token_message(record), token=token)

    def ListJoinTokens(self, request, context):
        return pb.JoinTokenList(tokens=[token_message(r) for r in self._admin().list_join_tokens(request.run_name)])

    def RevokeJoinToken(self, request, context):
        return token_message(self._admin().revoke_join_token(request.token_id))

    def SetRunState(self, request, context):
        settings = self._admin().set_state(request.run_name, request.state, request.force)
        return pb.RunStateResponse(run_name=request.run_name, state=settings.state)

    def SetDefaultRun(self, request, context):
        self._admin().set_default_run(request.run_name)
        return self.GetCoordinatorInfo(pb.CoordinatorInfoRequest(), context)

    def _admin(self) -> RunAdministration:
        if self.admin is None:
            raise RuntimeError("this servicer was built without run administration")
        return self.admin
