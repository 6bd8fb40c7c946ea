//! The proofs of the mutual handshake: each side shows it knows the cluster
//! token without sending it. A key is derived from the token (blake3's
//! key derivation, its own context string); each proof is a keyed blake3 hash
//! of both nonces, the client's role and name, and which side speaks, so a
//! proof can be replayed neither on another connection nor in the other
//! direction. Comparisons are constant-time (`blake3::Hash` equality).

use crate::frame::PeerRole;

/// Bytes of a nonce and of a proof.
pub const NONCE_BYTES: usize = 32;

/// The handshake key of a cluster token.
#[derive(Clone)]
pub struct HandshakeKey([u8; 32]);

impl std::fmt::Debug for HandshakeKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("HandshakeKey(..)")
    }
}

/// Which side a proof speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The connecting peer.
    Client,
    /// The accepting peer.
    Server,
}

/// What both sides bind their proofs to.
#[derive(Clone, Debug)]
pub struct Transcript<'a> {
    /// The client's fresh nonce.
    pub client_nonce: &'a [u8],
    /// The server's fresh nonce.
    pub server_nonce: &'a [u8],
    /// The role the client claims.
    pub role: PeerRole,
    /// The client's label.
    pub client_name: &'a str,
}

impl HandshakeKey {
    /// The key of `token`.
    pub fn from_token(token: &str) -> Self {
        Self(blake3::derive_key("manta 2026-12 cluster handshake v2", token.as_bytes()))
    }

    /// This side's proof over `transcript`.
    pub fn proof(&self, side: Side, transcript: &Transcript<'_>) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(match side {
            Side::Client => b"client",
            Side::Server => b"server",
        });
        for part in [transcript.client_nonce, transcript.server_nonce, transcript.client_name.as_bytes()] {
            hasher.update(&(part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.update(&[transcript.role as u8]);
        *hasher.finalize().as_bytes()
    }

    /// True when `proof` is `side`'s proof over `transcript` (constant time).
    pub fn verify(&self, side: Side, transcript: &Transcript<'_>, proof: &[u8]) -> bool {
        let Ok(proof) = <[u8; 32]>::try_from(proof) else {
            return false;
        };
        blake3::Hash::from_bytes(self.proof(side, transcript)) == blake3::Hash::from_bytes(proof)
    }
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_BYTES] {
    let mut bytes = [0u8; NONCE_BYTES];
    rand::fill(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript<'a>(client: &'a [u8], server: &'a [u8]) -> Transcript<'a> {
        Transcript { client_nonce: client, server_nonce: server, role: PeerRole::Node, client_name: "node 1" }
    }

    #[test]
    fn only_the_same_token_makes_the_same_proof() {
        let (client, server) = (nonce(), nonce());
        let key = HandshakeKey::from_token("secret");
        let proof = key.proof(Side::Client, &transcript(&client, &server));
        assert!(HandshakeKey::from_token("secret").verify(Side::Client, &transcript(&client, &server), &proof));
        assert!(!HandshakeKey::from_token("other").verify(Side::Client, &transcript(&client, &server), &proof));
    }

    #[test]
    fn a_proof_is_bound_to_its_side_nonces_and_role() {
        let (client, server) = (nonce(), nonce());
        let key = HandshakeKey::from_token("secret");
        let proof = key.proof(Side::Client, &transcript(&client, &server));
        assert!(!key.verify(Side::Server, &transcript(&client, &server), &proof), "not valid the other way");
        assert!(!key.verify(Side::Client, &transcript(&client, &nonce()), &proof), "not valid on another connection");
        let as_cli = Transcript { role: PeerRole::Cli, ..transcript(&client, &server) };
        assert!(!key.verify(Side::Client, &as_cli, &proof), "not valid for another role");
        assert!(!key.verify(Side::Client, &transcript(&client, &server), &proof[..31]), "short proofs fail");
    }
}
