// Finding and running rooms (issue 13): the directory with search, the topic under the
// room's name, the member list with roles, and the owner's and moderators' actions
// (roles, mute, ban, remove, settings). app.js owns the state and hands this module
// what it needs; the server decides every permission, the buttons only follow it.

import { moderationApi as mod } from "./api.js";

const ROLE_LABEL = { owner: "Owner", moderator: "Moderator", member: "Member" };

// Whether the caller runs this room (a DM has no moderation, whatever the role says).
export const isStaff = (r) =>
  Boolean(r) && !r.dm && (r.role === "owner" || r.role === "moderator");

export function setupModeration(ctx) {
  const { $, el, button, authed, toast, describeError, activeRoom } = ctx;
  // Which part of the room panel is open: "members", "settings" or null.
  let open = null;
  // Bumped whenever the member list is asked for, so that a late answer is dropped.
  let membersGen = 0;

  // -- the directory ----------------------------------------------------------

  async function loadDirectory() {
    const q = $("directory-q").value.trim();
    const data = await authed((token) => mod.directory(token, q));
    const items = data.rooms.map((room) => {
      const li = el("li", "directory-item");
      li.dataset.room = String(room.id);
      const text = el("div", "directory-text");
      text.append(el("span", "directory-name", room.name));
      if (room.topic) text.append(el("span", "directory-topic", room.topic));
      const count = room.member_count === 1 ? "1 member" : `${room.member_count} members`;
      text.append(el("span", "directory-count", count));
      const mine = ctx.isMember(room.id);
      const action = button(mine ? "Open" : "Join", "directory-join", async () => {
        action.disabled = true;
        try {
          await ctx.joinById(room.id);
          action.textContent = "Open";
        } catch (err) {
          toast(`Could not join: ${describeError(err)}`);
        } finally {
          action.disabled = false;
        }
      });
      action.setAttribute("aria-label", `${mine ? "Open" : "Join"} ${room.name}`);
      li.append(text, action);
      return li;
    });
    if (items.length === 0) {
      items.push(el("li", "muted small-text", q ? "No public room matches." : "No public rooms yet."));
    }
    $("directory-list").replaceChildren(...items);
  }

  // -- the room header --------------------------------------------------------

  function applyRoom(r, room) {
    if (typeof room.name === "string") r.name = room.name;
    if (typeof room.topic === "string") r.topic = room.topic;
    if (room.slow_mode !== undefined) r.slowMode = Number(room.slow_mode) || 0;
    if (typeof room.role === "string") r.role = room.role;
  }

  function renderRoom(r) {
    const topic = $("room-topic");
    topic.textContent = r.topic || "";
    topic.hidden = !r.topic;
    if (r.slowMode && !r.dm) {
      topic.hidden = false;
      topic.textContent = `${r.topic ? `${r.topic} · ` : ""}Slow mode: ${r.slowMode} s`;
    }
    $("settings-toggle").hidden = !isStaff(r);
    if (open === "settings" && !isStaff(r)) closePanel();
  }

  function closePanel() {
    open = null;
    $("room-panel").hidden = true;
    $("settings-form").hidden = true;
    $("members-panel").hidden = true;
    $("members-toggle").setAttribute("aria-expanded", "false");
    $("settings-toggle").setAttribute("aria-expanded", "false");
  }

  function toggle(which) {
    const r = activeRoom();
    if (!r) return;
    if (open === which) {
      closePanel();
      return;
    }
    closePanel();
    open = which;
    $("room-panel").hidden = false;
    $(`${which}-toggle`).setAttribute("aria-expanded", "true");
    if (which === "settings") {
      $("settings-name").value = r.name;
      $("settings-topic").value = r.topic || "";
      $("settings-slow").value = String(r.slowMode || 0);
      $("settings-form").querySelector(".form-error").textContent = "";
      $("settings-form").hidden = false;
      $("settings-name").focus();
    } else {
      $("members-panel").hidden = false;
      loadMembers(r);
    }
  }

  // -- members and what staff may do to them ----------------------------------

  async function loadMembers(r) {
    const gen = ++membersGen;
    $("members-error").textContent = "";
    let members = [];
    try {
      let after = 0;
      for (;;) {
        const data = await authed((token) => mod.members(token, r.id, after));
        members = members.concat(data.members);
        if (data.members.length < 1000) break;
        after = data.members[data.members.length - 1].user.id;
      }
    } catch (err) {
      if (gen === membersGen) $("members-error").textContent = describeError(err);
      return;
    }
    if (gen !== membersGen || activeRoom() !== r) return;
    const me = members.find((m) => ctx.isMe(m.user));
    if (me && me.role !== r.role) {
      r.role = me.role; // the owner changed it since the room list was read
      ctx.roleChanged(r);
    }
    $("mute-choice").hidden = !isStaff(r);
    $("member-list").replaceChildren(...members.map((m) => memberItem(r, m)));
  }

  function memberItem(r, m) {
    const li = el("li", "member");
    li.dataset.username = m.user.username;
    li.dataset.role = m.role;
    const name = el("span", "member-name", m.user.username + (ctx.isMe(m.user) ? " (you)" : ""));
    const role = el("span", `role role-${m.role}`, ROLE_LABEL[m.role] || m.role);
    const actions = el("span", "member-actions");
    li.append(name, role, actions);
    if (ctx.isMe(m.user) || !isStaff(r) || m.role === "owner") return li;
    const act = (label, className, run, done) => {
      const b = button(label, `act ${className}`, async () => {
        b.disabled = true;
        try {
          await authed(run);
          toast(done);
          await loadMembers(r);
        } catch (err) {
          toast(`${label}: ${describeError(err)}`);
          b.disabled = false;
        }
      });
      b.setAttribute("aria-label", `${label} ${m.user.username}`);
      actions.append(b);
    };
    const who = m.user.username;
    if (r.role === "owner") {
      const next = m.role === "moderator" ? "member" : "moderator";
      act(
        next === "moderator" ? "Make moderator" : "Make member",
        "set-role",
        (token) => mod.setRole(token, r.id, who, next),
        `${who} is now a ${next}.`,
      );
    }
    if (m.role === "member") {
      act(
        "Mute",
        "mute",
        (token) => mod.mute(token, r.id, who, Number($("mute-seconds").value)),
        `${who} is muted.`,
      );
      act("Unmute", "unmute", (token) => mod.unmute(token, r.id, who), `${who} may write again.`);
      act("Ban", "ban danger", (token) => mod.ban(token, r.id, who, ""), `${who} is banned.`);
    }
    if (m.role === "member" || r.role === "owner") {
      act(
        "Remove",
        "remove",
        (token) => ctx.removeMember(token, r.id, who),
        `${who} was removed.`,
      );
    }
    return li;
  }

  async function saveSettings() {
    const r = activeRoom();
    if (!r) return;
    const name = $("settings-name").value.trim();
    const topic = $("settings-topic").value.trim();
    const slow = Number($("settings-slow").value);
    const fields = {};
    if (name !== r.name) fields.name = name;
    if (topic !== (r.topic || "")) fields.topic = topic;
    if (slow !== (r.slowMode || 0)) fields.slow_mode = slow;
    if (Object.keys(fields).length === 0) {
      closePanel();
      return;
    }
    const data = await authed((token) => mod.updateRoom(token, r.id, fields));
    applyRoom(r, data.room);
    ctx.roomChanged(r);
    closePanel();
    toast("Room settings saved.");
  }

  function wire() {
    $("members-toggle").addEventListener("click", () => toggle("members"));
    $("settings-toggle").addEventListener("click", () => toggle("settings"));
    ctx.formHandler($("directory-form"), loadDirectory, { keep: true });
    ctx.formHandler($("settings-form"), saveSettings, { keep: true });
  }

  return { wire, loadDirectory, applyRoom, renderRoom, closePanel, loadMembers, isOpen: () => open };
}
