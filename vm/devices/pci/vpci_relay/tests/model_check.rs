//! A model check of the real [`BusRelay`](vpci_relay::BusRelay), unchanged and driven only
//! through its public API, with [stateright]: every interleaving of an abstract Hyper-V host
//! and an abstract unfixed Linux 6.2 guest, within bounds, is explored breadth first, and the
//! relay's promises to both peers are checked in every state reached.
//!
//! # The model (`model/`)
//!
//! `wire.rs` (the packets), `host.rs`, `guest.rs`, `state.rs` (state and actions),
//! `props.rs` (properties), `mod.rs` (bounds, one step, helpers for scripted scenarios),
//! `work.rs` (the guest's workqueue), `reads.rs` (the guest's config accesses, reads and
//! writes, and the device's answers), `scenarios.rs` and
//! `read_scenarios.rs` (the scripted scenarios: each counterexample found, replayed),
//! `teeth.rs` (each safeguard switched off).
//!
//! **State.** The state holds the relay itself (`BusRelay` is `Clone`): `next_state` clones
//! the previous state, feeds the relay one input and drains its outputs. A state's identity
//! (`Hash`/`Eq`) is a 64-bit hash of [`BusRelay::fingerprint`](vpci_relay::BusRelay::fingerprint)
//! (everything that decides the relay's future behaviour, taken after its outputs were
//! drained; not its counters) plus the abstract host, the abstract guest, the clock, the
//! relay's next timer, the last backing the relay emitted per slot and the observation flags;
//! never the history or the trace text. Two histories that leave all that equal are one
//! state. (Collisions of the 64-bit hash are the one theoretical gap; stateright itself keeps
//! only 64-bit fingerprints of states.)
//!
//! Before, the state kept the relay's input history and rebuilt the relay by replaying it at
//! every step, and hashed the relay's `Debug` text. Measured on the same machine, 2 threads,
//! debug build (the machine is shared, so figures vary by up to 2x between runs):
//!
//! | model | bound | unique states | time | unique states/s |
//! | --- | --- | --- | --- | --- |
//! | replay + `Debug` hash (074d841) | old `DEFAULT` (4 relations, 2 ejects, hot-add, re-add) | 229,402 | 33.5 s | 6,850 |
//! | clone + fingerprint (074d841 relay) | comparable: 4 relations, 2 ejects, 2 adds, a rescind | 262,383 | 10.8 s | 24,300 |
//! | clone + fingerprint (074d841 relay) | [`Bounds::DEFAULT`] | 745,121 | 23.8 s | 31,300 |
//!
//! so a step costs about a quarter of what it did (the replay grew with the path's depth).
//!
//! **Host** (one bus, slots 1 and 2; slot 1 present at boot, slot 2 absent unless
//! `two_at_boot`). Each slot holds its newest function and that function's identity: the host
//! numbers the functions it puts in a slot 1, 2, ... and writes the number into the device id
//! (`0xb0 + n`) and the serial number, so a re-listed slot always carries a new identity. Per
//! slot it also keeps when it sent each EJECT that still waits for an EJECTION_COMPLETE (an
//! EJECTION_COMPLETE answers the oldest). Its actions, each bounded by a [`Bounds`] field:
//! - `HostRelations`: BUS_RELATIONS2 with what it has, including a function it is ejecting
//!   (the survey answer once the guest's QUERY_BUS_RELATIONS reached it; a repeat or a
//!   duplicate at any later time);
//! - `HostDrop(s)`: leave out the function in slot `s` (listed or being ejected) and send
//!   relations: a surprise removal; its device is gone at once;
//! - `HostAdd(s)`: put a new function in slot `s` and announce it: a hot-add or a re-add, and,
//!   with `relist`, also while the old function is being ejected, or in place of a listed one
//!   (one relations message that changes the identity in the slot; the old device is gone);
//!   the guest may still hold the old function in each case;
//! - `HostEject(s)`: EJECT for a slot it has ever listed (with `free_ejects`; otherwise only a
//!   function it lists). **An EJECT names the function the host listed last in the slot**
//!   (the project's decision on the protocol's ambiguity, issue 12): if the host listed a new
//!   identity in the slot since its previous EJECT of the slot, even while that one is still
//!   unanswered, the EJECT ejects the new function; otherwise (nothing new listed: a relations
//!   message listing the same function again makes nothing new) it repeats the previous one.
//!   The function it names is torn down at once (OpenVMM issue #3077); the slot may also hold
//!   a function it dropped, or one whose ejection completed. Every EJECT, repeat or not, is
//!   owed its own EJECTION_COMPLETE within [`HOST_EJECT_BUDGET`] (60 s);
//! - `HostStaleRelations` (`stales`): a relations message the host built from its view before
//!   it processed the latest EJECTION_COMPLETE (so still listing the function that
//!   EJECTION_COMPLETE removed: a message in flight), arriving after the relay sent that
//!   EJECTION_COMPLETE; it arrives before any later packet of the host, or never;
//! - `HostRescind`;
//! - `HostComplete`: answer a forwarded request, in any order: success; for an interrupt
//!   request of a function it no longer has, a failure; for any request of such a function,
//!   `Ignore`: never answer it, or answer it later with `HostLate`, typically after the relay
//!   has answered it itself; or (`slows`) for BUS_D0ENTRY or QUERY_RESOURCE_REQUIREMENTS, the
//!   guest's probe-path requests, of any function, `Slow`: time passes, beyond the relay's
//!   `max_hold` if its timers go that far, and the host answers when it likes
//!   (`HostSlowAnswer`);
//! - `DeviceAnswer`: the device answers the guest's config access in flight (a read with the
//!   vendor and device id of the function it was for, or BAR0's size mask; a write as taken;
//!   all ones, reported as no value, if the host has removed that function since), at any time: at once, after an EJECT, relations change,
//!   drop or re-listing of that function, after a rescind (the service finishes every
//!   forwarded access), or (`slow_reads`) after `DeviceSlow`, when time has passed, if ever
//!   within the bound. A read is answered before time moves unless the device is slow on it,
//!   and a device the host has removed answers at once.
//!
//! Packets from the relay reach the host at once. A request the host receives is tagged with
//! the identity of the guest function it was sent for, so "a function it no longer has" means
//! that identity. Except with `Slow`, the host answers every request of a function it still
//! has before time moves on: one that never did would leave the guest waiting whatever the
//! relay does, so that is no freedom to check the relay against.
//!
//! **Guest** (Linux 6.2's `pci-hyperv`, as `petri-tests/guest_linux` models it). Four kinds of
//! context, each step of which is a separate action so that host actions interleave between
//! them: the probe path (QUERY_PROTOCOL_VERSION; QUERY_BUS_RELATIONS and wait for the survey;
//! BUS_D0ENTRY; RESOURCES_ASSIGNED2 per child linked at the survey; root-bus creation, which
//! reads each function's config space and starts its driver); the ordered workqueue (relations
//! work: QUERY_RESOURCE_REQUIREMENTS per new function, then survey completion, or a rescan
//! once installed; eject work: remove the driver (DELETE_INTERRUPT, a BAR read, a config read)
//! then EJECTION_COMPLETE, or, with no root bus yet, EJECTION_COMPLETE at once); one driver
//! per function (config and BAR reads, CREATE_INTERRUPT_MESSAGE2, wait, unmask). Each context
//! that touches config space makes a fixed series of accesses (`Reader::plan` in
//! `model/reads.rs`): a 4-byte read at offset 0 first, then, while the bound's budget
//! ([`Bounds::accesses`], counted over the run) lasts, the root-bus scan sizes BAR0 (writes
//! all ones at 0x10, reads the mask back), a driver's probe writes the command register
//! (offset 4: memory and bus master on) and its remove path writes it again (off). These take
//! the relay's distinct paths: forwarded reads and writes, a removed function's reads
//! answered from the description or from what the guest wrote, its writes kept in the
//! relay's copy, reads of a function the guest was told to let go answered with all ones. A
//! config access is two events: the guest starts it and the relay decides at once;
//! if the relay forwards it to the device, the context's vCPU sits in the read until the
//! device answers (`DeviceAnswer`), and then carries on with the rest of its step in the
//! same breath (root-bus creation scans the next slot; a driver reads its BARs and asks for
//! its interrupt; the eject work goes on to EJECTION_COMPLETE), starting with the next access
//! of its series, if any. Linux accesses config space under the bus's config lock, so at most
//! one access is in flight: a context whose next step touches config space waits while
//! another's access is in flight. The channel
//! callback runs atomically when a packet arrives: completions wake their waiter, relations
//! become the newest record plus a work item (records collapse), EJECT marks the child and
//! queues the eject work. Children are matched as Linux matches them: by slot, vendor id,
//! device id and serial; a child whose identity is not listed any more is unlinked with its
//! driver still bound. The races of the catalogue become failures: C2 (EJECT while a driver
//! sets up its interrupt, or a failed CREATE_INTERRUPT: NULL descriptor at unmask), C3 (an
//! ejection completed before the root bus existed, and the probe path then touches the
//! function), C4 (relations adding a function after the survey, before the root bus; or
//! dropping one the guest holds, or listing its slot with another identity), C1/C5 (the
//! channel closed while the probe path is mid-flight), C7 (a BAR access to a function whose
//! device the host removed, unless the relay emitted a Shield backing for it; a config access
//! the relay forwards to a removed device, or to the device that replaced it), and
//! `ChangeDuringAccess` (an EJECT, or relations that change what the guest has, arriving
//! while a vCPU sits in a config read the relay forwarded and still counts in flight: the
//! root-bus scan, driver probe or driver removal that read belongs to is mid-way; when the
//! relay no longer counts the read, after the host was lost, the change is noted, not
//! failed, as the relay's documented way out). A failed guest
//! takes no further step: the counterexample ends there. A request refused with BAD_DATA is a
//! property failure when fewer than the limit were really outstanding; when the limit really
//! was reached (possible only at the model's small limits) the path ends there, outside the
//! model.
//!
//! **Time.** A virtual clock; the action `AdvanceTime` moves it to the relay's `poll_timeout()`
//! (and calls `handle_timeout`) or to the host's deadline for its oldest unanswered EJECT,
//! whichever comes first, so settle windows (100 ms), the departed-request timeout (1 s), holds
//! and the relay's own answer to a host EJECT (`max_hold`, 30 s) expire, and so does the host's
//! 60 s budget (an EJECT still unanswered then is a failure; the host's timer wins a tie). Time
//! passes only while every guest context waits and the host owes no prompt answer (a request it
//! ignored or is slow on does not stop the clock) and no config read is in flight that the
//! device has not been allowed to be slow on: guest steps, host answers and config reads are
//! taken to be quick next to the settle window, the assumption the relay's settle rule rests
//! on. With `guest_stalls`, time may also pass while the guest's eject work is about to send
//! EJECTION_COMPLETE (its driver's remove path is slow): the guest is then stuck on that
//! change, the one case where the relay may give up on it at `max_hold`.
//!
//! **Relay configuration.** Default, except `max_outstanding_requests`, which is
//! [`Bounds::request_limit`]: 4 (the guest never has more than 4 requests out: probe path,
//! relations work, two drivers), or 1 in [`Bounds::REQUEST_TABLE`] so that a table that keeps
//! what is not live fills within the bound; and `max_remembered_answers`, which is
//! [`Bounds::remembered_answers`] (4, more than the bounds let the host ignore, so the memory
//! never overflows in the exhaustive checks; `bug3_hot_plug_cycles_do_not_fill_the_table`
//! runs it past a limit of 2).
//!
//! # Properties
//!
//! Each is a promise to a peer, checked in every state (`props.rs`); "at quiescence" means
//! nothing is in flight or runnable and the timers are drained: the guest has no step, the
//! host owes no answer (prompt or slow) and the relay wants no timer.
//! - *No guest panic or fault* (C1-C5, C7, and a change during a config read in flight).
//! - *G1*: at most one host change (an EJECT, or a relations message that changes what the
//!   guest has) outstanding at the guest, unless the guest is stuck in its own work on its
//!   change (the relay's documented `max_hold` fallback; observed as "the relay moved on from a
//!   stuck guest").
//! - *G2, no EJECT during probe*: no EJECT reaches the guest while its probe path is in
//!   progress, whatever it waits for and however long (a host slow past `max_hold` included).
//! - *G2, settled*: no EJECT for a function the guest has not linked or whose driver is
//!   setting up its interrupt.
//! - *G3*: a relations message never announces a function (slot and identity) the host no
//!   longer has (so neither an ejected function listed by stale relations, nor one an EJECT
//!   after a re-list named).
//! - *G5*: at quiescence after a rescind the guest channel is closed.
//! - *G7, requests*: no completion for a request the guest is not waiting for; at quiescence
//!   every guest request has been answered.
//! - *Final view* (`FINAL_VIEW`): at quiescence, unless the host rescinded or the guest
//!   channel closed, the guest holds exactly the functions the host has listed and still has
//!   (both directions: nothing missing, no ghost of a function the host ejected or dropped),
//!   each with the host's identity (slot, vendor, device id and serial as listed).
//! - *Every host EJECT is answered by exactly one EJECTION_COMPLETE*: none for a slot that is
//!   owed none (never two for one EJECT, none unasked), and at quiescence (host up) none
//!   owed. A duplicate EJECT is owed its own answer.
//! - *Every host EJECT is answered within the host's budget* (60 s of model time), however
//!   slow the host or the guest.
//! - *`max_hold` gives up only on a stuck guest*: the relay times a change out only while the
//!   guest is stuck in its own work on it, never while it waits on the host (replaces "no
//!   change runs into `max_hold`", which excluded slow hosts instead of checking them).
//! - *A conformant host is never counted malformed*: no `Malformed { side: Host }` event and
//!   no bus dropped for a protocol violation (the model's host keeps the protocol: a late
//!   completion, an EJECT of a dropped or ejected function, stale relations are within it).
//! - *No relay table outgrows what is live*: always, `requests_outstanding()` is at most the
//!   number of requests the guest really waits for, `host_requests_outstanding()` is 0 (the
//!   model's host sends the guest no requests), `remembered_local_answers()` is within
//!   [`Bounds::remembered_answers`], and `functions().count()` at most the two slots; at
//!   quiescence, nothing is outstanding and every function the relay keeps is for a slot the
//!   host lists, the guest holds, or the host's last relations message listed (until a
//!   message leaves a slot out, the relay may keep an ejected function's identity to
//!   recognise a stale listing of it). (The inspect tree is not read: its layout is the
//!   relay's to change, and the public API says the same.)
//! - *A guest request is refused only at the limit*: BAD_DATA only when at least
//!   `max_outstanding_requests` requests are really outstanding.
//! - *A write to a removed function never reaches the host* (`WRITES_SHIELDED`): the relay
//!   forwards a guest config write only while the host still has the function the guest
//!   wrote to, with the guest's identity (not after an EJECT, a drop, a re-listing of the slot
//!   or the host's loss); otherwise it keeps the write in its copy (`Drop`). A write is never
//!   answered as a read, nor a read dropped as a write.
//! - *Every forwarded access is in flight until done, once* (`ACCESSES_DONE_ONCE`): after
//!   every step the relay counts in flight exactly the access the guest sits in (none after
//!   the device's one report; fewer only when the access's device is gone), and none at
//!   quiescence.
//! - *A BAR reads back its size mask after the sizing write* (`BAR_READ_BACK`): whoever
//!   answers the read-back (the device, or the relay's copy of a removed function), the guest
//!   reads the mask its requirements answer gave it (all ones only once it was told to let
//!   go). It found the relay bug below (fixed since).
//!
//! Sometimes (so the check is not vacuous; asserted where the bound allows): an eject was
//! held, a function was coalesced, a request was answered locally, an eject removed a bound
//! driver, a rescind closed the guest, a slot was re-listed while the guest held it, a host
//! answered after the relay did, a slow host answer came past `max_hold`, a stale relations
//! message arrived after an EJECTION_COMPLETE, an EJECT after a re-list ejected the new
//! function, the guest's eject work stalled, a change ran into `max_hold`, the relay moved on
//! from a stuck guest, a device was slow on a config read (time passed meanwhile), a config
//! read was answered after its device left, a config write was forwarded to the device, a
//! config write to a removed function was kept by the relay.
//!
//! # Bounds and cost
//!
//! Measured on 2 threads in a debug build (`cargo test` is unoptimized), on a shared machine
//! (load average 4 to 5 on 2 cores), against the relay of cd2ea3f. The whole
//! `cargo test -p vpci_relay --test model_check` (six checks, teeth, scripted tests, run
//! concurrently, with the five checks that now fail un-ignored) took 38 s wall, 50 s CPU (75 s
//! wall in a busier moment); the times below are each check's own figure
//! in that run (the checks share the 2 cores). Against that relay guest failures still end
//! some paths of `SLOW` early, so its count will grow a little once the relay is fixed:
//!
//! | test | bound | unique states | depth | time |
//! | --- | --- | --- | --- | --- |
//! | `model_check_all_safeguards_on` | [`Bounds::DEFAULT`]: 3 relations, 2 ejects, 1 add, 1 drop, 1 stale relations message, 1 rescind | 170,182 | 35 | 9 s |
//! | `model_check_slow` | [`Bounds::SLOW`]: 3 relations, 2 ejects, 1 add, 1 slow probe-path answer, 1 guest stall | 245,578 | 38 | 25 s |
//! | `model_check_relist` | [`Bounds::RELIST`]: 3 relations, 2 ejects, 2 adds, 1 stale relations message | 190,183 | 43 | 12 s |
//! | `model_check_two_at_boot` | [`Bounds::TWO_AT_BOOT`]: both at boot, 3 relations, 2 ejects, 1 add, 1 stale relations message | 98,375 | 43 | 14 s |
//! | `model_check_request_table` | [`Bounds::REQUEST_TABLE`]: request limit 1, 3 relations, 2 ejects, 1 add, 1 ignored request answered late | 82,263 | 36 | 5 s |
//! | `model_check_teeth_bound` | [`Bounds::SMALL`] | 27,998 | 34 | 1.4 s (alone) |
//! | `model_check_slow_read` | [`Bounds::SLOW_READ`]: the teeth's host without a rescind, 1 slow config read | 65,742 | 41 | 10 s |
//! | `model_check_large_bound` (ignored) | [`Bounds::LARGE`]: 4 relations, 2 ejects, 1 add, 1 drop, 1 ignored request, 1 rescind, 1 slow answer, 1 stale relations message, 1 guest stall | more than 4,705,056 | more than 30 | unfinished after 4 min in a debug build (BFS); needs `--release`. At cd2ea3f it finds C7 (stale relations reach a stuck guest, which adds the ejected 1#1 again; a rescind's remove path then reads its released BARs) and TABLES |
//! | `model_check_large_two_at_boot` (ignored) | [`Bounds::LARGE_TWO_AT_BOOT`]: both at boot, 4 relations, 2 ejects, 1 add, 1 drop, 1 ignored request, 1 rescind, 1 slow answer, 1 stale relations message | not measured | | |
//!
//! The new freedoms are dear: a slow answer lets host actions interleave with every timer
//! (`3,2,1,1,0,0,1,4,0` with one slow answer passed 1.1 million states unfinished in a
//! minute, against 127,000 without), and a stale message in flight splits most states after
//! the first EJECTION_COMPLETE; so each default check takes a few of them at bounds that fit
//! the 2 minutes, and the large bounds combine them. Before the issue 12 freedoms the default
//! bound (4 relations, 2 ejects, 1 add, 1 drop, 1 ignored request, 1 rescind) had 402,448
//! states; it now has 621,239 (the host's EJECT times are part of its state).
//!
//! A release build (`cargo test --release`) explores 2.5 to 5 times as fast. Larger bounds
//! run that way with `model_check_custom` (`MODEL_BOUNDS`, thirteen numbers; `MODEL_TIMEOUT`
//! stops any check early to measure growth). Figures before issue 12 (the relay's reading of
//! EJECT, no slow answers, no stale relations): `5,3,2,1,1,1,1,4,0`, 23,595,871 states in 5
//! minutes (7857c65); `4,2,1,2,2,1,0,2,1`, 3,297,251 states in 58 s (7857c65);
//! `4,2,2,1,1,1,1,4,1`, 18,490,132 states in 6.3 minutes (4ab6751).
//!
//! **Config reads as two events** (the guest starts a read, the device answers it in an action
//! of its own) cost every check the interleavings of host actions between the two. Measured
//! on the same machine, the whole `cargo test -p vpci_relay --test model_check`, against the
//! relay of 012b6e7 plus its departure fix (the per-check times after are from a run at load
//! average 3.3 to 5.2; figures vary by up to 2x with the load):
//!
//! | test | unique states before (reads at once) | after (reads as two events) | time after |
//! | --- | --- | --- | --- |
//! | `model_check_all_safeguards_on` | 212,610 | 312,546 | 36 s |
//! | `model_check_slow` | 281,915 | 379,231 | 50 s |
//! | `model_check_relist` | 249,884 | 399,522 | 54 s |
//! | `model_check_two_at_boot` | 138,651 | 228,861 | 32 s |
//! | `model_check_request_table` | 90,660 | 113,515 | 16 s |
//! | `model_check_teeth_bound` | 34,336 | 49,544 | 5 s |
//! | `model_check_slow_read` (new) | | 65,742 | 10 s |
//! | the whole binary (wall, CPU) | 54 s, 76 s (load 1.6 to 3.9) | | 55 s, 107 s (load 2.3 to 3.2); 105 s wall at load 3.3 to 5.2 |
//!
//! Slow reads are dear where they meet other freedoms: with [`Bounds::SMALL`]'s rescind too,
//! 210,872 states (and the known host-loss counterexample below); `SLOW` with a slow read,
//! 1,235,317 states in 108 s; `MODEL_BOUNDS=3,2,1,1,0,0,0,4,0,0,0,0,1` (the default host with
//! a slow read, no rescind), 356,189 states in 30 s, all properties hold. So the default run
//! has one small slow-read bound; the larger ones are for `model_check_custom`.
//!
//! **Config writes and other offsets** ([`Bounds::accesses`]: 4 in `DEFAULT` and `RELIST`,
//! 2 in `SLOW_READ`, 0 elsewhere). Measured with `cargo test -p vpci_relay --test model_check
//! --release`, the binary before (c5b79f1) and after run in turn three times on the shared
//! machine: 14.5 to 15.0 s CPU before, 16.9 to 17.2 s after (about 16% more); wall 9.3 to
//! 14.1 s before and 9.0 to 28.9 s after, at load averages 3.1 to 5.8 (too noisy to compare;
//! in a quieter batch, load 2.5 to 3.1, with `SLOW_READ` at 4 accesses: 7.7 s before, 9.4 to
//! 10.8 s after; in a debug build, twice each at load 4.4: 110 to 114 s CPU before, 132 s
//! after, 97 to 107 s wall either way). States: `DEFAULT` 312,546 to 451,448, `SLOW_READ`
//! 204,801 to 261,107, the seven checks 1,688,020 to 1,883,228. With 4 accesses `SLOW_READ`
//! has 316,506 states, all properties holding, left to `model_check_custom` (its fourteenth
//! number). Once the BAR read-back bug was fixed (81649ad), `RELIST` got 4 accesses too (a
//! sizing write and its read-back across a re-listing with a new identity): 569,749 states
//! (from 399,522), 6 s in a release build at load average about 4; the seven checks about
//! 2.05 million.
//!
//! The teeth run at [`Bounds::SMALL`] on one thread and stop at the first counterexample
//! (under a second each).
//!
//! # Teeth
//!
//! With one safeguard of [`Safeguards`](vpci_relay::Safeguards) switched off the checker finds
//! a counterexample for each, at a bound that holds with all of them on
//! (`model_check_teeth_bound`): `one_change_at_a_time` (a hot-add delivered during the probe
//! path: C4, G1), `hold_eject_until_settled` (EJECT before the root bus: C3, G2), `coalesce`
//! (a function the host took back is announced: G3; the guest itself survives it, thanks to
//! the shield and the local answers), `local_answers` (the host's failure of a departed
//! function's interrupt request reaches the guest: C2), `rescind_at_safe_point` (the guest
//! channel closed mid-probe: C5), `removal_shield` (the driver-remove path reads a torn-down
//! device: C7); and at [`Bounds::SLOW_READ`] (`model_check_slow_read`),
//! `accesses_hold_the_bus` (a guest sitting in a config read the device is slow on looks
//! quiet, and relations adding a function, or an EJECT, reach it mid-read:
//! `ChangeDuringAccess`; the same for a slow command write,
//! `slow_write_holds_an_eject_of_another_function`). For writes, at [`Bounds::DEFAULT`]
//! (`teeth_removal_shield_writes`): without `removal_shield`, the root-bus scan's BAR sizing
//! write after its vendor read, with the host rescinded between them, is forwarded to the
//! gone device (`WRITES_SHIELDED`). `ACCESSES_DONE_ONCE` has no safeguard of its own; with
//! the model's guest broken so that it never reports a write done, the default check finds
//! "the relay counts 2 accesses in flight, the guest sits in 1" (and the final view).
//!
//! # Relay bugs this model found
//!
//! With the host's new freedoms, against the relay of 074d841 (each is a scripted test in
//! `model/scenarios.rs`, shown failing at 074d841 and passing since the relay fixes merged
//! from main at 3e768a8):
//! - **Bug 1, re-listed during eject** (`bug1_relisted_during_eject_reaches_the_guest`):
//!   boot with 1#1; `HostEject(1)`; `HostAdd(1)` (relations list 1#2 while the eject is
//!   outstanding); the guest completes 1#1's eject; 1#2 never reaches it (G7 delivery).
//! - **Bug 1, identity changed in place** (`bug1_identity_change_in_place_is_an_eject_and_an_add`):
//!   boot with 1#1; `HostAdd(1)` (one relations message lists 1#2 instead); the relay ignored
//!   the new description and passed the host's bytes through, since the slot list had not
//!   changed: the guest unlinked 1#1 with its driver bound (C4), and a following EJECT broke
//!   G1. Variants: with 1#1's interrupt request outstanding and ignored by the host, nobody
//!   answered it, since the relay still took 1#1 for listed (G7 requests, `max_hold`;
//!   `bug1_request_of_replaced_function_is_answered`); and the old model's re-add scenario,
//!   with a new identity, fails the same way (`successor_announced_after_eject_complete`).
//! - **Bug 2** (`bug2_eject_after_drop_is_answered`): boot; `HostDrop(1)`; `HostEject(1)`;
//!   the guest's EJECTION_COMPLETE was taken for the relay's own eject and not forwarded: the
//!   host's EJECT was never answered. If the EJECT comes after the guest let go
//!   (`bug2_eject_after_drop_completed_is_not_malformed`) it was answered but counted as a
//!   malformed `UnknownSlot` packet.
//! - **Duplicate EJECT** (`duplicate_eject_is_answered_twice`): `HostEject(1)` twice before
//!   the guest completes; the second was dropped as a repeat, so one EJECT went unanswered.
//! - **EJECT after a re-listing** (an ambiguity of the wire, since decided): boot with 1#1;
//!   `HostEject(1)`; `HostAdd(1)` (1#2 listed while the eject is unanswered); `HostEject(1)`.
//!   EJECT names only a slot. From 7857c65 the relay read the second EJECT as a repeat of the
//!   first and announced 1#2, which the host had torn down: the driver's config read went to
//!   the torn-down device (C7, G3). The project has decided that an EJECT names the function
//!   the host listed last in its slot (issue 12); the host model now reads it so, the old
//!   `repeat_ejects` switch and the opposite test are gone, and
//!   `eject_after_relist_ejects_the_new_function` passes since main's 97b51b5 (merged with
//!   6acc2b6).
//! - **Bug 3** (`bug3_answered_request_does_not_block_the_next`, at request limit 1): the
//!   driver of 1#1 waits for its interrupt; `HostEject(1)`; the host ignores the request; the
//!   relay answers it after 1 s but keeps it in its table; after the eject, `HostAdd(1)`: the
//!   guest's QUERY_RESOURCE_REQUIREMENTS for 1#2 is refused with BAD_DATA with nothing
//!   outstanding, and then the driver's interrupt request too (C2). Over cycles at limit 4,
//!   the fourth hot-add is refused (`bug3_hot_plug_cycles_do_not_fill_the_table`).
//!
//! **Issue 12: a host that is less kind.** The host model used to read a second EJECT the
//! relay's way, never answered more slowly than `max_hold` (a `NO_MAX_HOLD` property excluded
//! the case), and never sent stale relations. With those freedoms (scripted in
//! `model/scenarios.rs`; the relay of 89d0372 unless said otherwise):
//! - **EJECT after a re-list** (`eject_after_relist_ejects_the_new_function`): see above; C7
//!   and G3 at 89d0372, passes since the merge of 6acc2b6.
//! - **Slow D0 entry past `max_hold` with an EJECT held**
//!   (`slow_d0_entry_past_max_hold_with_eject_held`): the probe path sends BUS_D0ENTRY, the
//!   host is slow on it, `HostEject(1)`; at 30.1 s the relay's hold expired and it delivered
//!   the EJECT into the waiting probe path (G2 no EJECT during probe, G1; the guest completes
//!   at once with no root bus, then its probe path assigns resources to 1: C3). Passes since
//!   the merge of 6acc2b6 (97b51b5, 97de9bc): the relay answers the host's EJECT at
//!   `max_hold` and holds the guest's EJECT until the probe path is done.
//! - **Slow survey requirements with an EJECT held, chained holds**
//!   (`slow_requirements_past_max_hold_with_eject_held`): both at boot; 1#1's
//!   QUERY_RESOURCE_REQUIREMENTS slow; `HostEject(2)`; at 30.1 s the relations change timed
//!   out, the EJECT went into the probe path, and was answered only when that change timed
//!   out in turn, at 60.1 s: past the host's budget. Passes since the merge of 6acc2b6.
//! - **Stale relations after an EJECTION_COMPLETE**
//!   (`stale_relations_after_ejection_complete`): `HostEject(1)`, the guest lets go, the
//!   relay forwards EJECTION_COMPLETE, and relations listing 1#1 arrive: the relay announced
//!   1#1 again (G3; its driver's config read went to the removed device, C7). Passes since
//!   the merge of 6acc2b6.
//!
//! Found by this model after those fixes, and fixed in the relay with it (each failed on the
//! relay of cd2ea3f):
//! - **Relations to a stuck guest list the function it ejects**
//!   (`stuck_guest_is_not_sent_the_function_it_ejects`, `model_check_slow`): boot with 1#1;
//!   `HostEject(1)` (delivered); the guest removes the driver and stalls; at 30.2 s the relay
//!   answers the EJECT and moves on; `HostAdd(2)`: the relay sends the guest
//!   RELATIONS[(1, 1), (2, 1)], built from what the guest holds, 1#1 included. Linux's
//!   ordered workqueue finishes the eject (1#1 unlinked), then its relations work finds 1#1
//!   listed and new, adds it again, and its driver reads the BARs the relay released (C7):
//!   a ghost. The same with a stale relations message instead of the new function
//!   (`stale_relations_after_max_hold_answer_with_slow_guest`): once the change ran out, the
//!   relay is idle and the stale message, which says exactly what the guest still holds,
//!   goes through byte for byte. Fixed: a function the guest was told to eject is not in the
//!   view relations are built from (or compared with).
//! - **An ejected function's entry outlives the host's omission of its slot**
//!   (`omitted_slot_is_forgotten_once_the_guest_lets_go`, TABLES in every default check):
//!   e.g. 1#2 listed in place of bound 1#1 (the relay ejects 1#1, then announces 1#2);
//!   `HostEject(1)` twice; RELATIONS[] (slot 1 left out) while the guest still holds 1#2; the
//!   guest lets go: the relay keeps an entry for slot 1 (1#2, host `Ejected`, guest `Hidden`)
//!   that neither side has, though the omission already told it the slot's next listing is a
//!   new function. One entry per slot, so it does not grow with cycles; but it is not live.
//!   (`bug2_eject_after_drop_is_answered`, a drop then an EJECT, leaves one too.) Fixed: a
//!   function remembers that the host's latest relations left its slot out, and then leaves
//!   no memory behind when the guest lets go (no stale listing of it can follow an omission
//!   on a first-in, first-out channel).
//!
//! Found with slow config reads (`model/read_scenarios.rs`), against the relay of 012b6e7:
//! - **A slow read was given up the moment its function departed**
//!   (`slow_read_of_an_ejected_function_still_holds_the_bus`, `model_check_slow_read`): the
//!   guest's driver of 2#1 sits in a config read the device is slow on; time passes (30 s);
//!   `HostEject(2)`: the read had been in flight longer than `departed_request_timeout`, so
//!   the relay gave it up at once and delivered EJECT(2) into the driver's probe (G2); in the
//!   root-bus scan's read the same let a held EJECT of the other function into the probe
//!   path (C3). Fixed in the relay: the timeout counts from the departure.
//! - **A lost host's accesses were forgotten at once**
//!   (`host_loss_during_slow_read_lets_a_held_eject_in`): a guest in a slow read of 2#1;
//!   `HostEject(1)`, held for the guest (the host's EJECT answered at its deadline); the hold
//!   ran out meanwhile; `HostRescind`: the relay forgot the access and delivered EJECT(1)
//!   while the guest was still in the read (with a driver waiting on the config lock
//!   mid-probe, C2). Fixed in the relay: a lost host's accesses count as departed with it
//!   (given up `departed_request_timeout` after the loss, unless done first).
//!
//! Earlier, at the surprise-removal bound of the old model (fixed by 2c9b344 and 06cc642,
//! kept as `re_add_during_synthesized_eject_reaches_the_guest`,
//! `eject_of_re_added_function_is_completed`, `successor_announced_after_eject_complete`): a
//! re-added function never announced; a host EJECT of the re-added function dropped as a
//! repeat (C7, G3); a successor waiting for a bus-quiet timer nobody armed.
//!
//! Found with config writes (`model/reads.rs`), against the relay of c5b79f1, fixed by
//! 81649ad (forwarded writes land in the shield's copy too; kept as the tests of
//! `tests/bar_sizing_across_removal.rs`):
//! - **A forwarded BAR sizing write is lost at the removal** (`BAR_READ_BACK`, every bound
//!   with accesses): the root-bus scan writes all ones to BAR0 of 1#1, which the relay
//!   forwards; `HostEject(1)` (held: the write is in flight); the device answers; the scan
//!   reads BAR0 back, and the relay, shielding the removed function, answers from its copy,
//!   which has only writes it kept itself: all ones, not the size mask (Linux takes it for an
//!   unimplemented BAR), though the guest has not been told to let go. The same when the
//!   device took the write before the EJECT. A write kept in the copy
//!   (`held_eject_keeps_bar_sizing_working`) reads back right.
//!
//! # Not modelled
//!
//! How the host pairs EJECTION_COMPLETEs with its EJECTs of a slot: each answers the oldest
//! owed (for the 60 s budget), and any of them removes the function the slot holds if it is
//! being ejected; a host that removed a re-listed, ejected function only at the EJECTION_COMPLETE
//! paired with that function's own EJECT would list it a little longer (which the relay must
//! read as the same, ejected function) and is not modelled. Slow answers to requests other
//! than BUS_D0ENTRY and QUERY_RESOURCE_REQUIREMENTS (an interrupt request of a departed function
//! is covered by ignored and late answers). A guest slow anywhere but at the end of its eject
//! work.
//!
//! Version fallback (the guest asks for 1.4 only), D0 entry failure and the kdump retry,
//! config accesses beyond the series above (narrow accesses, the MSI-X capability, the
//! BAR address written back after sizing; the promises fuzz target has arbitrary ones), a
//! device that keeps state across accesses (it answers BAR0 with the mask: the model's only
//! read of BAR0 follows the sizing write), a device slow on an access after
//! the host removed its function (it answers at once: the relay gives such a read up
//! `departed_request_timeout` after the departure, by design), slow reads together with a
//! rescind in the default bounds (above), the allow-list
//! (every function is allowed), malformed packets and relations that list a slot twice (a
//! protocol violation; the fuzz targets and `hostile.rs` cover them), more than one interrupt
//! per function, the host's own requests to the guest (INVALIDATE_BLOCK), failed
//! QUERY_RESOURCE_REQUIREMENTS (the guest model links the function anyway), a late answer
//! to a request the relay has already forgotten (the relay counts it as a `StaleTransaction`
//! fault, which the "conformant host" property would flag; the exhaustive bounds never
//! overflow the memory, and `late_answer_beyond_memory_keeps_the_bus` checks that the bus
//! survives it), and the
//! guest's own reaction to a rescind beyond "a bound driver's remove path reads its BARs".
//! Packets reach the host at once, and the guest's channel callback runs atomically with the
//! relay's output.
//!
//! # Reading a counterexample
//!
//! Each failing property prints its path, one line per action: the virtual time after it, the
//! action (`Guest(Probe)`, `Guest(Work)`, `Guest(Driver(n))` are guest steps; `Host*` are host
//! actions; `HostComplete { txid, .. }` names the relay's transaction id of the forwarded
//! request), and what that step made the relay deliver (`host adds 1#2`, `guest<-EJECT(1)`,
//! `host<-EJECTION_COMPLETE(1)`, `guest<-done Interrupt(2) ok=true`, `guest<-CLOSE`);
//! relations show `(slot, identity)` pairs. The last line gives the guest's failure and the
//! observation flags (`g1`/`g2`/`g3` say which change broke the rule). Run a single test with
//! `-- --nocapture` to see them.

mod model;

use model::*;

use stateright::{Checker, Expectation, Model};
use std::time::Instant;
use vpci_relay::Safeguards;

/// Prints a counterexample: each action and what it made the relay deliver to either side.
fn print_path(name: &str, path: stateright::Path<State, Action>) {
    println!("counterexample for \"{name}\":");
    let mut prev: Option<Action> = None;
    let mut last = None;
    for (state, action) in path.into_vec() {
        if let Some(a) = prev {
            println!("  {:>8?}  {a:?}  => {}", state.now, state.last);
        }
        prev = action;
        last = Some(state);
    }
    if let Some(s) = last {
        println!("  failure: {:?}; seen: {:?}", s.guest.failure, s.seen);
        println!("  host: {:?}", s.host);
        if name == FINAL_VIEW {
            println!("  {}", s.final_view_diff());
        }
        if name == TABLES {
            let relay = &s.relay.relay;
            println!(
                "  relay: {} requests outstanding; functions {:?}",
                relay.requests_outstanding(),
                relay.functions().collect::<Vec<_>>()
            );
        }
    }
}

/// Properties the relay is known to break, each with the ignored scripted test that shows it
/// failing: the check prints their counterexamples and asserts that it still finds them (so
/// an entry goes once the relay is fixed), and fails on any other.
const KNOWN_RELAY_BUGS: &[(&str, &str)] = &[];

/// Runs the exhaustive check with all safeguards on, prints its size and every failure, and
/// asserts that every property holds (and every `sometimes` property the bound can reach was
/// reached), but for [`KNOWN_RELAY_BUGS`], which must fail where the bound can reach them.
fn check_all_on(bounds: Bounds) {
    let start = Instant::now();
    let mut checker = RelayModel::new(bounds, Safeguards::ALL_ON)
        .checker()
        .threads(2);
    // For measuring a bound: stop after this many seconds (the check is then incomplete).
    if let Some(secs) = std::env::var("MODEL_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        checker = checker.timeout(std::time::Duration::from_secs(secs));
    }
    let c = checker.spawn_bfs().join();
    println!(
        "{bounds:?}: {} unique states, {} total, depth {}, {:?}",
        c.unique_state_count(),
        c.state_count(),
        c.max_depth(),
        start.elapsed()
    );
    let mut broken = Vec::new();
    for p in c.model().properties() {
        let known = KNOWN_RELAY_BUGS.iter().find(|(name, _)| *name == p.name);
        match (c.discovery(p.name), p.expectation) {
            (Some(path), Expectation::Always) => {
                print_path(p.name, path);
                match known {
                    Some((_, test)) => println!("known relay bug: {test}"),
                    None => broken.push(p.name),
                }
            }
            (None, Expectation::Always) if known.is_some() && bounds.can_reach(p.name) => {
                println!("known relay bug no longer found: {}", p.name);
                broken.push(p.name);
            }
            (Some(_), _) => println!("reached: {}", p.name),
            (None, Expectation::Sometimes) if bounds.can_reach(p.name) => {
                broken.push(p.name);
            }
            (None, _) => {}
        }
    }
    assert!(broken.is_empty(), "broken or never reached: {broken:#?}");
}

/// With every safeguard on, no interleaving within the default bound (a new function, a
/// surprise removal, two ejects of any slot the host has listed, so an EJECT after a
/// re-listing, a stale relations message, a rescind) breaks a property; and the interesting
/// cases occur. [`Bounds::DEFAULT`]: 170,182 unique states, depth 35, 9 s in a debug build on
/// 2 threads of a shared 2-core machine, alongside the other checks (the whole
/// `cargo test -p vpci_relay --test model_check`: 38 to 75 s wall, depending on the load).
///
/// Relay bugs 1 and 2: failed on the relay of 074d841 (see the module doc), pass since 3e768a8.
/// Stale relations re-announcing an ejected function: failed at 89d0372, passes since the
/// merge of 6acc2b6. Still fails at cd2ea3f on TABLES: an ejected function's entry outlives
/// the host's omission of its slot (`omitted_slot_is_forgotten_once_the_guest_lets_go`).
#[test]
fn model_check_all_safeguards_on() {
    check_all_on(Bounds::DEFAULT);
}

/// The host slow on a probe-path request past `max_hold` (with EJECTs held meanwhile) and a
/// guest stuck in its eject work past `max_hold`: every EJECT still answered in the host's
/// budget, none delivered into the probe, and the final views agree. 245,578 unique states
/// (guest failures still end some paths), depth 38, 25 s alongside the other checks.
///
/// Fails at cd2ea3f: relations built after the `max_hold` fallback list the function the
/// stuck guest ejects, which the guest then adds again (C7;
/// `stuck_guest_is_not_sent_the_function_it_ejects`); and TABLES as in the default check.
#[test]
fn model_check_slow() {
    check_all_on(Bounds::SLOW);
}

/// The same with two new functions in a slot (re-listed while the old one is listed,
/// ejecting or still held by the guest) and a stale relations message. Fails at cd2ea3f on
/// TABLES only.
///
/// Relay bug 1: failed on the relay of 074d841, passes since 3e768a8.
#[test]
fn model_check_relist() {
    check_all_on(Bounds::RELIST);
}

/// The same with both functions present at boot and a stale relations message. Fails at
/// cd2ea3f on TABLES only.
///
/// Relay bugs 1 and 2: failed on the relay of 074d841, passes since 3e768a8.
#[test]
fn model_check_two_at_boot() {
    check_all_on(Bounds::TWO_AT_BOOT);
}

/// The same with a request limit of one, so a table that keeps answered requests refuses the
/// next one within the bound. Fails at cd2ea3f on TABLES only.
///
/// Relay bugs 1, 2 and 3: failed on the relay of 074d841, passes since 3e768a8.
#[test]
fn model_check_request_table() {
    check_all_on(Bounds::REQUEST_TABLE);
}

/// The teeth's bound (the old model's host) holds with every safeguard on, so each teeth
/// counterexample below is the switched-off safeguard's doing.
#[test]
fn model_check_teeth_bound() {
    check_all_on(Bounds::SMALL);
}

/// A config access the device takes its time over (any read: the root-bus scan's, a driver's
/// probe, a driver's removal; or the scan's BAR sizing write or read-back), and host actions
/// around it; with every safeguard on no EJECT or relations change reaches the guest
/// mid-access.
#[test]
fn model_check_slow_read() {
    check_all_on(Bounds::SLOW_READ);
}

/// The default check at a larger bound.
#[test]
#[ignore = "takes minutes in a debug build; run with --ignored (or --release)"]
fn model_check_large_bound() {
    check_all_on(Bounds::LARGE);
}

/// Both functions at boot, at a larger bound.
#[test]
#[ignore = "takes minutes in a debug build; run with --ignored (or --release)"]
fn model_check_large_two_at_boot() {
    check_all_on(Bounds::LARGE_TWO_AT_BOOT);
}

/// The check at a bound given in the environment, for hunting at larger bounds (best with
/// `--release`): `MODEL_BOUNDS=relations,ejects,adds,drops,ignores,late_answers,rescinds,
/// request_limit,two_at_boot,slows,stales,guest_stalls,slow_reads[,accesses]` (`two_at_boot` 0
/// or 1; `accesses`, the guest's config accesses beyond each context's first read, 0 if left
/// out), every freedom on. `MODEL_TIMEOUT=seconds` stops any check early (to measure a bound's growth).
#[test]
#[ignore = "a tool: MODEL_BOUNDS=5,3,2,1,1,1,1,4,0,1,1,1,1 cargo test --release ... -- --ignored model_check_custom"]
fn model_check_custom() {
    let v: Vec<u8> = std::env::var("MODEL_BOUNDS")
        .expect("MODEL_BOUNDS")
        .split(',')
        .map(|x| x.trim().parse().expect("a number"))
        .collect();
    assert!(
        v.len() == 13 || v.len() == 14,
        "thirteen numbers, and optionally the accesses budget"
    );
    check_all_on(Bounds {
        relations: v[0],
        ejects: v[1],
        adds: v[2],
        drops: v[3],
        ignores: v[4],
        late_answers: v[5],
        rescinds: v[6],
        request_limit: v[7].into(),
        remembered_answers: usize::from(v[4]).max(4),
        two_at_boot: v[8] != 0,
        slows: v[9],
        stales: v[10],
        guest_stalls: v[11],
        slow_reads: v[12],
        accesses: v.get(13).copied().unwrap_or(0),
        ..Bounds::DEFAULT
    });
}
