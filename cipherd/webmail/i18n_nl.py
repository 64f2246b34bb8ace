"""
Dutch (nl) for the portal: English source text → Dutch.  Keys are the
exact English texts of the templates (C{_()}), of the portal's messages and
of the back end's reasons the portal shows.
"""

from __future__ import annotations

CATALOG: dict[str, str] = {
    # Every page.
    "Skip to the content": "Naar de inhoud",
    "Main": "Hoofdmenu",
    "Inbox": "Postvak IN",
    "New message": "Nieuw bericht",
    "Account": "Account",
    "Log out": "Uitloggen",
    "Language": "Taal",
    "Logged in as %(address)s.": "Ingelogd als %(address)s.",
    "Your messages are kept encrypted. This site never asks for your password by email; "
    "type it only on this page.":
        "Uw berichten worden versleuteld bewaard. Deze site vraagt nooit per e-mail om uw "
        "wachtwoord; typ het alleen op deze pagina.",
    "Back to the inbox": "Terug naar Postvak IN",
    "Go to the login page": "Naar de inlogpagina",
    "Back to the login page": "Terug naar de inlogpagina",
    "Please try again": "Probeer het opnieuw",
    "This form was open too long or came from another page. Go back, reload the page and "
    "send it again.":
        "Dit formulier stond te lang open of kwam van een andere pagina. Ga terug, laad de "
        "pagina opnieuw en verstuur het nog eens.",
    "Not found": "Niet gevonden",
    "Something went wrong": "Er ging iets mis",
    "This page could not be shown. Try again in a moment.":
        "Deze pagina kon niet worden getoond. Probeer het zo opnieuw.",
    "There is no such page or message. It may have been deleted.":
        "Deze pagina of dit bericht bestaat niet. Misschien is het verwijderd.",
    "This address cannot be a page of this site. Check the link you followed.":
        "Dit adres kan geen pagina van deze site zijn. Controleer de link die u volgde.",
    # Login.
    "Log in to read your secure messages": "Log in om uw beveiligde berichten te lezen",
    "Email address": "E-mailadres",
    "Password": "Wachtwoord",
    "Log in": "Inloggen",
    "Forgot your password?": "Wachtwoord vergeten?",
    "New here? Open the link in the message that told you about your secure message to "
    "choose a password.":
        "Nieuw hier? Open de link in het bericht dat u over uw beveiligde bericht vertelde om "
        "een wachtwoord te kiezen.",
    "Your session has ended. For your safety you are logged out after 15 minutes without "
    "activity. Log in again.":
        "Uw sessie is beëindigd. Voor uw veiligheid wordt u na 15 minuten zonder activiteit "
        "uitgelogd. Log opnieuw in.",
    "You have logged out. Close the browser window if this is a shared computer.":
        "U bent uitgelogd. Sluit het browservenster als dit een gedeelde computer is.",
    "Too many failed attempts. For your safety, logging in is locked for %(minutes)s more "
    "minute(s). Try again later, or reset your password.":
        "Te veel mislukte pogingen. Voor uw veiligheid is inloggen nog %(minutes)s minuut/"
        "minuten geblokkeerd. Probeer het later opnieuw, of stel uw wachtwoord opnieuw in.",
    "Too many login attempts at once. Wait a moment and try again.":
        "Te veel inlogpogingen tegelijk. Wacht even en probeer het opnieuw.",
    "The server is busy. Wait a moment and try again.":
        "De server is bezig. Wacht even en probeer het opnieuw.",
    "The email address or the password is not right.":
        "Het e-mailadres of het wachtwoord klopt niet.",
    # The second factor.
    "Enter your one-time code": "Voer uw eenmalige code in",
    "Open the authenticator app on your phone and enter the six-digit code it shows for "
    "this site.":
        "Open de authenticator-app op uw telefoon en voer de code van zes cijfers in die "
        "deze voor deze site toont.",
    "Code": "Code",
    "Continue": "Doorgaan",
    "Cancel and log out": "Annuleren en uitloggen",
    "That code is not right. Enter the code your app shows now.":
        "Die code klopt niet. Voer de code in die uw app nu toont.",
    "That code is not right. Check that the time on your phone is correct and enter the "
    "code your app shows now.":
        "Die code klopt niet. Controleer of de tijd op uw telefoon klopt en voer de code in "
        "die uw app nu toont.",
    "Set up a second factor": "Tweede factor instellen",
    "This site requires a second factor. Set it up now to continue.":
        "Deze site vereist een tweede factor. Stel die nu in om verder te gaan.",
    "Install an authenticator app on your phone (for example one from your phone's maker, "
    "FreeOTP or Aegis).":
        "Installeer een authenticator-app op uw telefoon (bijvoorbeeld die van de maker van "
        "uw telefoon, FreeOTP of Aegis).",
    "In the app, add an account and type this key:":
        "Voeg in de app een account toe en typ deze sleutel:",
    "Or, on the phone itself, open this link:": "Of open op de telefoon zelf deze link:",
    "add to authenticator app": "toevoegen aan authenticator-app",
    "Show the full setup address": "Het volledige instellingsadres tonen",
    "Enter the six-digit code the app now shows.":
        "Voer de code van zes cijfers in die de app nu toont.",
    "Turn on the second factor": "Tweede factor inschakelen",
    "A second factor is required here; it cannot be removed.":
        "Een tweede factor is hier verplicht; die kan niet worden verwijderd.",
    # Sign-up and reset.
    "Choose your password": "Kies uw wachtwoord",
    "Choose a new password": "Kies een nieuw wachtwoord",
    "Secure messages for %(address)s are waiting.":
        "Er wachten beveiligde berichten voor %(address)s.",
    "From:": "Van:",
    "Choose a password to read them. From now on you log in with your email address and "
    "this password.":
        "Kies een wachtwoord om ze te lezen. Voortaan logt u in met uw e-mailadres en dit "
        "wachtwoord.",
    "Choose a new password for %(address)s.": "Kies een nieuw wachtwoord voor %(address)s.",
    "New password": "Nieuw wachtwoord",
    "New password again": "Nieuw wachtwoord nogmaals",
    "Tip: several unrelated words make a password that is easy to remember and hard to "
    "guess.":
        "Tip: enkele woorden die niets met elkaar te maken hebben, vormen een wachtwoord dat "
        "makkelijk te onthouden en moeilijk te raden is.",
    "Strong enough.": "Sterk genoeg.",
    "The two passwords are not the same.": "De twee wachtwoorden zijn niet gelijk.",
    "Set password": "Wachtwoord instellen",
    "Your password is set": "Uw wachtwoord is ingesteld",
    "You can now log in as %(address)s to read your secure messages.":
        "U kunt nu inloggen als %(address)s om uw beveiligde berichten te lezen.",
    "Enter the address your secure messages were sent to. If it has an account, we mail it "
    "a link to choose a new password.":
        "Voer het adres in waarnaar uw beveiligde berichten zijn gestuurd. Als het een "
        "account heeft, mailen we er een link naartoe om een nieuw wachtwoord te kiezen.",
    "Send the link": "Link versturen",
    "Check your mail": "Kijk in uw e-mail",
    "If this address has a webmail account, a message with a link to choose a new password "
    "is on its way. The link works once and for a limited time.":
        "Als dit adres een webmailaccount heeft, is er een bericht onderweg met een link om "
        "een nieuw wachtwoord te kiezen. De link werkt één keer en een beperkte tijd.",
    "Password reset is not available": "Wachtwoord opnieuw instellen is niet beschikbaar",
    "Ask the person who sent you the secure message to have your account reset.":
        "Vraag degene die u het beveiligde bericht stuurde om uw account te laten herstellen.",
    "This link cannot be used": "Deze link kan niet worden gebruikt",
    "What to do now": "Wat u nu kunt doen",
    "Ask for a new password reset link": "Een nieuwe link aanvragen",
    "Ask for a new password reset link below. If you remember your password, just log in.":
        "Vraag hieronder een nieuwe link aan. Weet u uw wachtwoord nog, log dan gewoon in.",
    "If you have set a password already, log in. Otherwise ask the person who sent you the "
    "secure message to send it again: a new message brings a new link.":
        "Hebt u al een wachtwoord ingesteld, log dan in. Vraag anders degene die u het "
        "beveiligde bericht stuurde om het opnieuw te sturen: een nieuw bericht brengt een "
        "nieuwe link.",
    # Link refusals (cipherd.webmail.accounts).
    "This link is damaged. Copy the whole link from the message.":
        "Deze link is beschadigd. Kopieer de hele link uit het bericht.",
    "This link is not valid. Copy the whole link from the message, or ask for a new one.":
        "Deze link is niet geldig. Kopieer de hele link uit het bericht, of vraag een nieuwe "
        "aan.",
    "This link has expired. Ask for a new one.": "Deze link is verlopen. Vraag een nieuwe aan.",
    "This link has been used already. Ask for a new one.":
        "Deze link is al gebruikt. Vraag een nieuwe aan.",
    "This account is disabled. Ask the sender of your messages.":
        "Dit account is uitgeschakeld. Vraag het de afzender van uw berichten.",
    "A password has been set already: log in, or reset it.":
        "Er is al een wachtwoord ingesteld: log in, of stel het opnieuw in.",
    r"The password is too easy to guess \((?P<bits>\d+) bits; at least (?P<needed>\d+) are "
    r"needed\)\.(?P<hints>.*)":
        "Het wachtwoord is te makkelijk te raden ({bits} bits; er zijn er minstens {needed} "
        "nodig).",
    "The password is too long (at most 1024 characters).":
        "Het wachtwoord is te lang (hoogstens 1024 tekens).",
    # The inbox.
    "Search by sender or subject": "Zoeken op afzender of onderwerp",
    "Search": "Zoeken",
    "Show all messages": "Alle berichten tonen",
    "%(num)s message deleted.": "%(num)s bericht verwijderd.",
    "%(num)s messages deleted.": "%(num)s berichten verwijderd.",
    "%(num)s message matches “%(query)s”.": "%(num)s bericht voldoet aan “%(query)s”.",
    "%(num)s messages match “%(query)s”.": "%(num)s berichten voldoen aan “%(query)s”.",
    "Your messages, newest first": "Uw berichten, nieuwste eerst",
    "Select all messages on this page": "Alle berichten op deze pagina selecteren",
    "Select: %(subject)s": "Selecteren: %(subject)s",
    "From": "Van",
    "Subject": "Onderwerp",
    "Received": "Ontvangen",
    "Size": "Grootte",
    "Unread:": "Ongelezen:",
    "(unknown sender)": "(onbekende afzender)",
    "(no subject)": "(geen onderwerp)",
    "Has attachments": "Heeft bijlagen",
    "Delete selected": "Selectie verwijderen",
    "Delete the selected messages? This cannot be undone.":
        "De geselecteerde berichten verwijderen? Dit kan niet ongedaan worden gemaakt.",
    "Pages": "Pagina's",
    "Newer": "Nieuwer",
    "Older": "Ouder",
    "Messages %(first)s\u2013%(last)s of %(total)s":
        "Berichten %(first)s\u2013%(last)s van %(total)s",
    "No messages match your search.": "Geen berichten gevonden.",
    "Your inbox is empty.": "Uw Postvak IN is leeg.",
    # One message.
    "To": "Aan",
    "Cc": "Cc",
    "Date": "Datum",
    "Reply": "Beantwoorden",
    "Reply all": "Allen beantwoorden",
    "Download (.eml)": "Downloaden (.eml)",
    "Print": "Afdrukken",
    "Delete": "Verwijderen",
    "Delete this message? This cannot be undone.":
        "Dit bericht verwijderen? Dit kan niet ongedaan worden gemaakt.",
    "%(num)s remote image was blocked to protect your privacy: loading it would tell the "
    "sender when and where you read this message.":
        "%(num)s externe afbeelding is geblokkeerd om uw privacy te beschermen: laden zou de "
        "afzender vertellen wanneer en waar u dit bericht leest.",
    "%(num)s remote images were blocked to protect your privacy: loading them would tell "
    "the sender when and where you read this message.":
        "%(num)s externe afbeeldingen zijn geblokkeerd om uw privacy te beschermen: laden "
        "zou de afzender vertellen wanneer en waar u dit bericht leest.",
    "Show remote content": "Externe inhoud tonen",
    "Remote content is shown for this message.": "Externe inhoud wordt getoond voor dit bericht.",
    "Block it again": "Weer blokkeren",
    "Message content": "Inhoud van het bericht",
    "%(num)s attachment": "%(num)s bijlage",
    "%(num)s attachments": "%(num)s bijlagen",
    "Open attachments only if you expected them.": "Open bijlagen alleen als u ze verwachtte.",
    # Replies and new messages.
    "Reply to all": "Allen beantwoorden",
    "Back to the message": "Terug naar het bericht",
    "To:": "Aan:",
    "nobody yet": "nog niemand",
    "Replies may go only to the addresses your administrator allows. These will not get "
    "your reply:":
        "Antwoorden mogen alleen naar de adressen die uw beheerder toestaat. Deze krijgen uw "
        "antwoord niet:",
    "Also send to (optional)": "Ook sturen naar (optioneel)",
    "Email addresses, separated by commas.": "E-mailadressen, gescheiden door komma's.",
    "Email addresses, separated by commas. Only addresses your administrator allows will "
    "get the message.":
        "E-mailadressen, gescheiden door komma's. Alleen adressen die uw beheerder toestaat, "
        "krijgen het bericht.",
    "Subject:": "Onderwerp:",
    "Message": "Bericht",
    "The original message is quoted below your text":
        "Het oorspronkelijke bericht wordt onder uw tekst aangehaald",
    "Attachments (optional)": "Bijlagen (optioneel)",
    "At most %(mb)s MB in all.": "Samen hoogstens %(mb)s MB.",
    "Send me a copy": "Stuur mij een kopie",
    "The form could not be read": "Het formulier kon niet worden gelezen",
    "The form is not one a browser sends.": "Dit formulier komt niet van een browser.",
    "The form has too many parts. Attach fewer files.":
        "Het formulier heeft te veel delen. Voeg minder bestanden toe.",
    "(kept in your webmail inbox)": "(bewaard in uw webmail-inbox)",
    "Send": "Versturen",
    "Your message was sent": "Uw bericht is verstuurd",
    "Your message was not sent": "Uw bericht is niet verstuurd",
    "Sent to:": "Verstuurd naar:",
    "Not sent to:": "Niet verstuurd naar:",
    "The reply was not sent: no authorized recipient.":
        "Het antwoord is niet verstuurd: geen toegestane ontvanger.",
    "The message was not sent: no authorized recipient.":
        "Het bericht is niet verstuurd: geen toegestane ontvanger.",
    "That message is not in your mailbox.": "Dat bericht staat niet in uw postvak.",
    "not an authorized recipient: replies may go only to the addresses and domains the "
    "administrator allows":
        "geen toegestane ontvanger: antwoorden mogen alleen naar de adressen en domeinen die "
        "de beheerder toestaat",
    # The account.
    "Your account": "Uw account",
    "Change your password": "Uw wachtwoord wijzigen",
    "Your password was changed. Other sessions were logged out.":
        "Uw wachtwoord is gewijzigd. Andere sessies zijn uitgelogd.",
    "Current password": "Huidig wachtwoord",
    "Change password": "Wachtwoord wijzigen",
    "The current password is not right.": "Het huidige wachtwoord klopt niet.",
    "Second factor": "Tweede factor",
    "The second factor is set up. From now on you need a code from your app to log in.":
        "De tweede factor is ingesteld. Voortaan hebt u een code uit uw app nodig om in te "
        "loggen.",
    "The second factor was removed.": "De tweede factor is verwijderd.",
    "You log in with your password and a code from your authenticator app.":
        "U logt in met uw wachtwoord en een code uit uw authenticator-app.",
    "Remove the second factor": "Tweede factor verwijderen",
    "Protect your account with a code from an authenticator app on your phone, as well as "
    "your password.":
        "Bescherm uw account met een code uit een authenticator-app op uw telefoon, naast uw "
        "wachtwoord.",
    # Replies to PDF-encrypted messages.
    "Reply securely": "Veilig antwoorden",
    "Your reply goes to %(sender)s only, over this secure connection.":
        "Uw antwoord gaat alleen naar %(sender)s, over deze beveiligde verbinding.",
    "Re: your encrypted message": "Re: uw versleutelde bericht",
    "This page works without an account. Anyone with the link can use it: keep the link to "
    "yourself.":
        "Deze pagina werkt zonder account. Iedereen met de link kan hem gebruiken: houd de link "
        "voor uzelf.",
    "Your reply was sent": "Uw antwoord is verstuurd",
    "You can close this page.": "U kunt deze pagina sluiten.",
    "This reply link cannot be used": "Deze antwoordlink kan niet worden gebruikt",
    "Reply to the sender by email, or ask the sender to send the message again: a new message "
    "brings a new link.":
        "Antwoord de afzender per e-mail, of vraag de afzender het bericht opnieuw te sturen: "
        "een nieuw bericht brengt een nieuwe link.",
    "This link is not valid. Copy the whole link from the message.":
        "Deze link is niet geldig. Kopieer de hele link uit het bericht.",
    "This reply link has expired. Write to the sender by email, or ask for the message to be "
    "sent again.":
        "Deze antwoordlink is verlopen. Schrijf de afzender per e-mail, of vraag om het bericht "
        "opnieuw te sturen.",
    "Replies through this page are turned off for this sender. Write to the sender by email "
    "instead.":
        "Antwoorden via deze pagina staan uit voor deze afzender. Schrijf de afzender in plaats "
        "daarvan per e-mail.",
    "This link has been used for a reply already: it works once.":
        "Met deze link is al geantwoord: hij werkt één keer.",
    "The reply is empty: write something or attach a file.":
        "Het antwoord is leeg: schrijf iets of voeg een bestand toe.",
    # Expired and recalled messages; the sender's status and recall pages.
    "This message has expired": "Dit bericht is verlopen",
    "This message was recalled": "Dit bericht is teruggeroepen",
    "Not allowed for this message": "Niet toegestaan voor dit bericht",
    "Use a passkey": "Gebruik een passkey",
    "Sign in with a passkey": "Inloggen met een passkey",
    "Passkeys": "Passkeys",
    "The passkey was added. You can sign in with it instead of your password, or give it "
    "after your password as the second factor.":
        "De passkey is toegevoegd. U kunt er in plaats van uw wachtwoord mee inloggen, of hem "
        "na uw wachtwoord als tweede factor gebruiken.",
    "The passkey was removed.": "De passkey is verwijderd.",
    "A passkey (your phone, your computer's fingerprint reader or a security key) signs you "
    "in without a password.":
        "Met een passkey (uw telefoon, de vingerafdruklezer van uw computer of een "
        "beveiligingssleutel) logt u in zonder wachtwoord.",
    "Remove this passkey?": "Deze passkey verwijderen?",
    "added %(when)s": "toegevoegd %(when)s",
    "last used %(when)s": "laatst gebruikt %(when)s",
    "Remove": "Verwijderen",
    "Name of the new passkey": "Naam van de nieuwe passkey",
    "My phone": "Mijn telefoon",
    "Add a passkey": "Passkey toevoegen",
    "Passkeys need JavaScript.": "Passkeys hebben JavaScript nodig.",
    "A second factor is required here: add another passkey or set up an authenticator app "
    "before you remove this one.":
        "Een tweede factor is hier verplicht: voeg een andere passkey toe of stel een "
        "authenticator-app in voordat u deze verwijdert.",
    "The passkey's answer cannot be read.": "Het antwoord van de passkey is onleesbaar.",
    "The passkey answered another page's question. Try again.":
        "De passkey antwoordde op de vraag van een andere pagina. Probeer het opnieuw.",
    "The page was open too long. Try again.":
        "De pagina stond te lang open. Probeer het opnieuw.",
    "This passkey answer was used already. Try again.":
        "Dit antwoord van de passkey is al gebruikt. Probeer het opnieuw.",
    "This passkey is registered already.": "Deze passkey is al geregistreerd.",
    "This passkey is not registered here. Sign in with your password, then add it on your "
    "account page.":
        "Deze passkey is hier niet geregistreerd. Log in met uw wachtwoord en voeg hem toe op "
        "uw accountpagina.",
    "An account has at most 10 passkeys: remove one first.":
        "Een account heeft hoogstens 10 passkeys: verwijder er eerst een.",
    "Sign in with a code by email": "Inloggen met een code per e-mail",
    "If %(address)s may sign in this way, a code is on its way to it. It works once, for 10 "
    "minutes.":
        "Als %(address)s zo mag inloggen, is er een code onderweg. Die werkt één keer, 10 "
        "minuten lang.",
    "Sign-in code": "Inlogcode",
    "Sign in": "Inloggen",
    "Send a new code": "Stuur een nieuwe code",
    "We mail you a code to sign in with: no password needed.":
        "We mailen u een code om mee in te loggen: geen wachtwoord nodig.",
    "Email me a code": "Mail mij een code",
    "Sign in with a password instead": "Liever inloggen met een wachtwoord",
    "Email me a sign-in code instead": "Mail mij liever een inlogcode",
    "That code is not right, or no longer works. Ask for a new one if it is more than 10 "
    "minutes old.":
        "Die code klopt niet of werkt niet meer. Vraag een nieuwe als hij ouder is dan 10 "
        "minuten.",
    "The sender does not allow replies to this message.":
        "De afzender staat geen antwoorden op dit bericht toe.",
    "The sender does not allow this message or its attachments to be downloaded.":
        "De afzender staat niet toe dat dit bericht of de bijlagen worden gedownload.",
    "The sender requires a second factor to read this message.":
        "De afzender vereist een tweede factor om dit bericht te lezen.",
    "view only": "alleen bekijken",
    "not available: the sender does not allow downloads":
        "niet beschikbaar: de afzender staat downloaden niet toe",
    "Its sender let it be read until %(when)s; it is no longer available. Ask the sender if "
    "you still need it.":
        "De afzender liet het lezen tot %(when)s; het is niet meer beschikbaar. Vraag het de "
        "afzender als u het nog nodig hebt.",
    "Its sender took it back: it is no longer available. Ask the sender if you still need "
    "it.":
        "De afzender heeft het teruggenomen: het is niet meer beschikbaar. Vraag het de "
        "afzender als u het nog nodig hebt.",
    "This message has expired: it is no longer available.":
        "Dit bericht is verlopen: het is niet meer beschikbaar.",
    "The sender has recalled this message: it is no longer available.":
        "De afzender heeft dit bericht teruggeroepen: het is niet meer beschikbaar.",
    "This link has expired.": "Deze link is verlopen.",
    "Use the links of the delivery receipt as they are; they work for a limited time after "
    "the message was sent.":
        "Gebruik de links uit de ontvangstbevestiging zoals ze zijn; ze werken een beperkte "
        "tijd nadat het bericht is verstuurd.",
    "Nothing is known of this message": "Van dit bericht is niets bekend",
    "It is in no mailbox here any more, and what became of it has been forgotten.":
        "Het staat hier in geen enkele mailbox meer, en wat ermee gebeurde is vergeten.",
    "Choose at least one recipient to recall the message from.":
        "Kies ten minste één ontvanger om het bericht bij terug te roepen.",
    "What became of your message": "Wat er met uw bericht gebeurde",
    "Expires on %(when)s.": "Verloopt op %(when)s.",
    "Times are in UTC. Opened means the message was shown in the secure webmail; it does not "
    "say that it was read or understood.":
        "Tijden zijn in UTC. Geopend betekent dat het bericht in de beveiligde webmail werd "
        "getoond; het zegt niet dat het gelezen of begrepen is.",
    "Recall your message": "Uw bericht terugroepen",
    "Recalled from: %(addresses)s. It is gone from their mailboxes.":
        "Teruggeroepen bij: %(addresses)s. Het is uit hun mailboxen verdwenen.",
    "It was in none of those mailboxes any more.":
        "Het stond in geen van die mailboxen meer.",
    "Recall the message from the chosen mailboxes? This cannot be undone.":
        "Het bericht uit de gekozen mailboxen terugroepen? Dit kan niet ongedaan worden gemaakt.",
    "Recall it from": "Terugroepen bij",
    "A recalled message disappears from the mailbox at once. Whoever has opened it may have "
    "kept a copy.":
        "Een teruggeroepen bericht verdwijnt meteen uit de mailbox. Wie het al opende, kan "
        "een kopie hebben bewaard.",
    "Recall": "Terugroepen",
    "The message is in no mailbox any more: there is nothing to recall.":
        "Het bericht staat in geen enkele mailbox meer: er is niets terug te roepen.",
    "In the mailbox": "In de mailbox",
    "Expired": "Verlopen",
    "Recalled": "Teruggeroepen",
    "Deleted by the recipient": "Verwijderd door de ontvanger",
    "Delivered to the mailbox": "Afgeleverd in de mailbox",
    "Recipient notified": "Ontvanger op de hoogte gebracht",
    "First opened": "Voor het eerst geopend",
    "Downloaded": "Gedownload",
    "Replied": "Beantwoord",
}
