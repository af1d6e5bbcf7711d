// The sign-in page's one script: it keeps the page's deep link (`#task=…`) through sign-in.
// The form posts to `/ui/login#task=…`; the answer, a 303 to `/ui`, names no fragment, so the
// browser keeps the one it asked with and lands on `/ui#task=…`. Nothing here is secret:
// the page serves it before sign-in (`/ui/static/login.js`, loaded by the sign-in page).
const form = document.querySelector('form[action="/ui/login"]');
if (form && /^#task=/.test(window.location.hash)) {
  form.setAttribute("action", `/ui/login${window.location.hash}`);
}
