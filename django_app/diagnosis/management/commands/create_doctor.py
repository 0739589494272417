"""Create (or update) a doctor's account: python django_app/manage.py create_doctor NAME ..."""
import getpass
import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from diagnosis.models import ApiToken


class Command(BaseCommand):
    help = ("Create a doctor account (or update its password). The password comes from --password, "
            "then $XRAY_DOCTOR_PASSWORD, then an interactive prompt.")

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--password", help="prefer $XRAY_DOCTOR_PASSWORD: argv is visible to other users")
        parser.add_argument("--email", default="")
        parser.add_argument("--first-name", default="")
        parser.add_argument("--last-name", default="")
        parser.add_argument("--staff", action="store_true", help="may also use the Django admin")
        parser.add_argument("--token", action="store_true", help="also issue an API token and print it once")
        parser.add_argument("--update", action="store_true", help="update the password if the user exists")
        parser.add_argument("--if-no-users", action="store_true",
                            help="do nothing when any account exists (first start of a development site)")
        parser.add_argument("--random-password", action="store_true",
                            help="generate a strong password and print it once")
        parser.add_argument("--skip-validation", action="store_true",
                            help="accept a password that fails the strength rules (development only)")

    def handle(self, *args, username, password, email, first_name, last_name, staff, token, update,
               skip_validation, if_no_users, random_password, **options):
        User = get_user_model()
        if if_no_users and User.objects.exists():
            return
        if random_password:
            password = secrets.token_urlsafe(12)
            self.stdout.write(f"generated password for '{username}' (shown once): {password}")
        password = password or os.environ.get("XRAY_DOCTOR_PASSWORD")
        if not password:
            if not options.get("interactive", True) or not os.isatty(0):
                raise CommandError("no password: pass --password or set XRAY_DOCTOR_PASSWORD")
            password = getpass.getpass(f"Password for {username}: ")
            if password != getpass.getpass("Again: "):
                raise CommandError("passwords differ")
        user = User.objects.filter(username=username).first()
        if user is not None and not update:
            raise CommandError(f"user '{username}' exists (use --update to change the password)")
        candidate = user or User(username=username, email=email, first_name=first_name, last_name=last_name)
        if not skip_validation:
            try:
                validate_password(password, candidate)
            except ValidationError as exc:
                raise CommandError("password rejected: " + " ".join(exc.messages)) from None
        created = user is None
        user = candidate
        for attr, value in (("email", email), ("first_name", first_name), ("last_name", last_name)):
            if value:
                setattr(user, attr, value)
        user.is_staff = user.is_staff or staff
        if created or not user.check_password(password):  # an unchanged password keeps the API tokens
            user.set_password(password)
        user.save()
        self.stdout.write(self.style.SUCCESS(f"{'created' if created else 'updated'} doctor '{username}'"))
        if token:
            _, key = ApiToken.issue(user, "created by create_doctor")
            self.stdout.write(f"API token (shown once): {key}")
