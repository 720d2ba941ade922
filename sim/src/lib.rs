//! Spur's deterministic cluster simulator (`spur-sim`).
//!
//! What lives here: the simulated world around Spur's real control plane —
//! the data-plane model that answers reachability and multicast questions
//! ([`dataplane`]).
//!
//! What does not live here: Spur's own logic (the agent, the controller and
//! the domain rules are the production crates, run unchanged).

pub mod dataplane;
