//! The seam between the coordinator's decisions and the agents that carry
//! them out. Failovers, switchovers and repairs send every command through
//! [`AgentCommands`]: the real [`AgentClients`] send it over mutual-TLS
//! gRPC under the lease's epoch; tests put [`Scripted`] replies in their
//! place, so every step of an operation can be table-tested in
//! milliseconds without a server ("given these positions and this reply,
//! the next step is X and the journal says Y").

use std::time::Duration;

use dbfleet_lease::Epoch;
use dbfleet_proto::pb;
use dbfleet_proto::pb::command_request::Command;
use futures::future::BoxFuture;

use crate::fleet::MemberState;
use crate::ha::Ha;
use crate::ha::voters::AgentClients;

/// Under what a command is sent.
#[derive(Debug, Clone)]
pub struct Sending<'a> {
    /// The lease's epoch the command carries (the agent refuses older).
    pub epoch: &'a Epoch,
    /// The operation's id, the agent's idempotency key (empty: none).
    pub operation_id: &'a str,
    /// The operation's step number (0: none).
    pub step: u32,
    /// The longest the call may take.
    pub timeout: Duration,
}

/// Sends commands to members' agents.
pub trait AgentCommands: Send + Sync + std::fmt::Debug {
    /// Sends `command` to `m`'s agent; the reply, or why there is none, in
    /// words naming the member.
    fn send<'a>(
        &'a self,
        ha: &'a Ha,
        m: &'a MemberState,
        sending: Sending<'a>,
        command: Command,
    ) -> BoxFuture<'a, Result<pb::CommandReply, String>>;
}

impl AgentCommands for AgentClients {
    fn send<'a>(
        &'a self,
        ha: &'a Ha,
        m: &'a MemberState,
        sending: Sending<'a>,
        command: Command,
    ) -> BoxFuture<'a, Result<pb::CommandReply, String>> {
        Box::pin(self.command_member(
            ha,
            m,
            sending.epoch,
            sending.operation_id,
            sending.step,
            command,
            sending.timeout,
        ))
    }
}

/// A scripted reply, by member and command kind.
#[cfg(test)]
type Script = std::collections::HashMap<(String, &'static str), Result<pb::CommandReply, String>>;

/// Replies set by a test, per member and command kind; a command nobody
/// scripted fails as an unreachable agent would. Every command sent is
/// recorded in order.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Scripted {
    replies: std::sync::Mutex<Script>,
    sent: std::sync::Mutex<Vec<(String, &'static str)>>,
}

#[cfg(test)]
impl Scripted {
    /// `host`'s agent answers every command of `kind` with `reply`.
    pub fn answer(&self, host: &str, kind: &'static str, reply: Result<pb::CommandReply, String>) {
        self.replies
            .lock()
            .unwrap()
            .insert((host.to_string(), kind), reply);
    }

    /// Every command sent so far: (member, kind), in order.
    pub fn sent(&self) -> Vec<(String, &'static str)> {
        self.sent.lock().unwrap().clone()
    }

    /// The commands of `kind` sent so far, by member.
    pub fn sent_of(&self, kind: &str) -> Vec<String> {
        self.sent()
            .into_iter()
            .filter(|(_, k)| *k == kind)
            .map(|(h, _)| h)
            .collect()
    }
}

#[cfg(test)]
impl AgentCommands for Scripted {
    fn send<'a>(
        &'a self,
        _ha: &'a Ha,
        m: &'a MemberState,
        _sending: Sending<'a>,
        command: Command,
    ) -> BoxFuture<'a, Result<pb::CommandReply, String>> {
        let k = command.name();
        self.sent.lock().unwrap().push((m.host.clone(), k));
        let reply = self
            .replies
            .lock()
            .unwrap()
            .get(&(m.host.clone(), k))
            .cloned()
            .unwrap_or_else(|| Err(format!("{}: no answer within 5s", m.host)));
        Box::pin(async move { reply })
    }
}
