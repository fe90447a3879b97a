// The dialog that asks for a reason before the serving version changes (Escape or Cancel closes
// it; the API's refusal shows in it and it stays open).

import { fill } from "./dom.js";

const $ = (id) => document.getElementById(id);
const ACTOR_KEY = "janus-console-actor";

/** Opens the dialog; `submit({reason, actor, force})` does the change (throws to refuse).
 * Resolves to submit's answer, or null when the user closed the dialog. */
export function askChange({ title, text, target = null, force = false, confirm = "Confirm", submit }) {
  const dialog = $("change-dialog");
  const form = $("change-form");
  const reason = $("change-reason");
  const actor = $("change-actor");
  const error = $("change-error");
  const button = $("change-confirm");
  $("change-title").textContent = title;
  $("change-text").textContent = text;
  fill($("change-target"), target);
  $("change-force").hidden = !force;
  $("change-force-input").checked = false;
  button.textContent = confirm;
  reason.value = "";
  actor.value = sessionStorage.getItem(ACTOR_KEY) || "";
  error.textContent = "";

  return new Promise((resolve) => {
    let answer = null;
    const onSubmit = async (event) => {
      event.preventDefault();
      if (!reason.value.trim()) {
        error.textContent = "Give a reason: it goes into the serving history.";
        reason.focus();
        return;
      }
      button.disabled = true;
      try {
        if (actor.value.trim()) sessionStorage.setItem(ACTOR_KEY, actor.value.trim());
        answer = await submit({
          reason: reason.value.trim(),
          actor: actor.value.trim() || null,
          force: $("change-force-input").checked,
        });
        dialog.close("done");
      } catch (err) {
        error.textContent = err.message;
      } finally {
        button.disabled = false;
      }
    };
    const onCancel = () => dialog.close("cancel");
    const onClose = () => {
      form.removeEventListener("submit", onSubmit);
      $("change-cancel").removeEventListener("click", onCancel);
      dialog.removeEventListener("close", onClose);
      resolve(answer);
    };
    form.addEventListener("submit", onSubmit);
    $("change-cancel").addEventListener("click", onCancel);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    reason.focus();
  });
}
